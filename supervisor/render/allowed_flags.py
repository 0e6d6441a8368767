"""The llama-server flags a manifest may pass in `server.extra_args`: an allowlist (pure data).

Only flags that tune inference or performance are here, grouped, with one line
saying why the group is safe. render.argv.check_extra_args refuses every other flag
with the manifest's file:line, so a new llama.cpp release adds no attack
surface by default: its new flags are refused until someone adds them here.
A flag on this list is still refused when the image's `--help` does not list it
(an unknown flag) or when its help text warns against untrusted environments
(the lock's `warned_flags`), whatever this table says.

Checked against llama.cpp build 11434 (the pinned release); each flag is in its
`--help` unless OTHER_RELEASES names it
[tests/unit/test_allowed_flags.py, tests/integration/test_allowed_flags_image.py].
"""

from __future__ import annotations

GROUPS: dict[str, tuple[str, ...]] = {
    "sampling defaults (an API client may set the same per request)": (
        "--samplers", "-s", "--seed", "--sampler-seq", "--sampling-seq", "--ignore-eos",
        "--temp", "--temperature", "--top-k", "--top-p", "--min-p", "--top-nsigma", "--top-n-sigma",
        "--xtc-probability", "--xtc-threshold", "--typical", "--typical-p", "--repeat-last-n",
        "--repeat-penalty", "--presence-penalty", "--frequency-penalty", "--dry-multiplier", "--dry-base",
        "--dry-allowed-length", "--dry-penalty-last-n", "--dry-sequence-breaker", "--adaptive-target",
        "--adaptive-decay", "--dynatemp-range", "--dynatemp-exp", "--mirostat", "--mirostat-lr",
        "--mirostat-ent", "-l", "--logit-bias", "--grammar", "-j", "--json-schema", "-n", "--predict",
        "--n-predict", "-bs", "--backend-sampling", "-sp", "--special"),
    "chat formatting and reasoning, given inline (the model file's own template is the same surface)": (
        "--jinja", "--no-jinja", "--chat-template", "--chat-template-kwargs", "--reasoning-format",
        "-rea", "--reasoning", "--reasoning-effort", "--reasoning-budget", "--reasoning-budget-message",
        "--reasoning-preserve", "--no-reasoning-preserve", "--skip-chat-parsing", "--no-skip-chat-parsing",
        "--prefill-assistant", "--no-prefill-assistant", "--spm-infill"),
    "context extension and shifting (RoPE, YaRN, tokens kept)": (
        "--rope-scaling", "--rope-scale", "--rope-freq-base", "--rope-freq-scale", "--yarn-orig-ctx",
        "--yarn-ext-factor", "--yarn-attn-factor", "--yarn-beta-slow", "--yarn-beta-fast", "--keep",
        "--context-shift", "--no-context-shift"),
    "batching of requests into the context": (
        "-ub", "--ubatch-size", "-cb", "--cont-batching", "-nocb", "--no-cont-batching",
        "-sps", "--slot-prompt-similarity"),
    "KV and prompt cache, in memory only (the file-backed caches are not here)": (
        "--cache-reuse", "--cache-prompt", "--no-cache-prompt", "-cram", "--cache-ram", "--cache-idle-slots",
        "--no-cache-idle-slots", "-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified", "--kv-unified-per-slot",
        "--swa-full", "-ctxcp", "--ctx-checkpoints", "--swa-checkpoints", "-cms", "--checkpoint-min-step",
        "-dt", "--defrag-thold", "-kvo", "--kv-offload", "-nkvo", "--no-kv-offload"),
    "CPU threads, affinity, priority and polling (within the container's cpuset and capabilities)": (
        "-tb", "--threads-batch", "--threads-http", "-C", "--cpu-mask", "-Cr", "--cpu-range", "--cpu-strict",
        "--prio", "--poll", "-Cb", "--cpu-mask-batch", "-Crb", "--cpu-range-batch", "--cpu-strict-batch",
        "--prio-batch", "--poll-batch", "--numa"),
    "how the verified model file is loaded and where its weights live": (
        "-lm", "--load-mode", "-lzm", "--lazy-mode", "--mlock", "--mmap", "--no-mmap", "--repack", "-nr",
        "--no-repack", "--no-host", "--op-offload", "--no-op-offload", "--check-tensors", "--warmup",
        "--no-warmup"),
    "spreading the model over the GPUs the profile gives the container": (
        "-dev", "--device", "-ot", "--override-tensor", "-cmoe", "--cpu-moe", "-ncmoe", "--n-cpu-moe",
        "-ncffn", "--n-cpu-ffn", "-sm", "--split-mode", "-ts", "--tensor-split", "-mg", "--main-gpu",
        "-fit", "--fit", "-fitt", "--fit-target", "-fitc", "--fit-ctx"),
    "speculative decoding settings (draft model files and lookup caches are not here)": (
        "--spec-type", "--spec-draft-n-max", "--spec-draft-n-min", "--spec-draft-p-min", "--draft-p-min",
        "--spec-draft-p-split", "--draft-p-split", "--spec-draft-sampling", "--spec-draft-backend-sampling",
        "--no-spec-draft-backend-sampling", "--spec-ngram-mod-n-min", "--spec-ngram-mod-n-max",
        "--spec-ngram-mod-n-match", "--spec-ngram-simple-size-n", "--spec-ngram-simple-size-m",
        "--spec-ngram-simple-min-hits", "--spec-ngram-map-k-size-n", "--spec-ngram-map-k-size-m",
        "--spec-ngram-map-k-min-hits", "--spec-ngram-map-k4v-size-n", "--spec-ngram-map-k4v-size-m",
        "--spec-ngram-map-k4v-min-hits"),
    "what the model serves: embeddings, pooling, reranking": (
        "--embedding", "--embeddings", "--rerank", "--reranking", "--pooling", "--embd-normalize"),
    "names the API reports, its timeouts, read-only metrics, the slots endpoint turned off": (
        "-a", "--alias", "--tags", "-to", "--timeout", "--sse-ping-interval", "--metrics", "--no-slots"),
    "how much is logged to stdout, i.e. docker's rotated log (verbose logs hold prompts)": (
        "-v", "--verbose", "--log-verbose", "-lv", "--verbosity", "--log-verbosity", "--log-prefix",
        "--no-log-prefix", "--log-timestamps", "--no-log-timestamps", "--perf", "--no-perf"),
}
ALLOWED: dict[str, str] = {flag: why for why, flags in GROUPS.items() for flag in flags}

# Flags allowed above that the pinned release's --help does not list: older or newer spellings.
OTHER_RELEASES: dict[str, str] = {
    "--mlock": "older releases; folded into --load-mode mlock",
    "--mmap": "older releases; folded into --load-mode mmap",
    "--no-mmap": "older releases; folded into --load-mode none",
}
