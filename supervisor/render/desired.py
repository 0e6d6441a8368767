"""Manifest + profile + image lock + host -> DesiredModel, with the llama-server argv checked against the lock.

Everything here is pure except `load_desired`, the daemon's entry point, which
reads the manifest directory and stats the model files. A model with a problem
is left out and its problems returned (`file:line: what (fix: how)`); the rest
still render.

Default health start_timeout (seconds), when the manifest leaves it null:
    10 + file_size / 100 MB + ctx_size / 4096, capped at 600
(ctx_size 0, the model's own context, counts as 32768; an absent file as 0 bytes.)
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from supervisor.artifacts import gguf, hardware, hostfile, modelsrc
from supervisor import paths
from supervisor.render.allowed_flags import ALLOWED
from supervisor.core.spec import (
    ContainerSpec,
    DesiredModel,
    GpuRequest,
    HealthPolicy,
    LoadPolicy,
    Mount,
    RestartPolicy,
    RestartSettings,
    Serving,
)
from supervisor.artifacts.gguf import GgufFacts
from supervisor.artifacts.hardware import HostInfo
from supervisor.artifacts.lock import ImageLock, ImageRecord
from supervisor.manifest.loader import ManifestSet, Origin, load_dir
from supervisor.manifest.schema import ModelManifest, ProfileManifest

CONTAINER_PORT = 8080
MODEL_DIR = "/models"
API_KEY_TARGET = "/run/secrets/api-key"
DEFAULT_GPU_LAYERS = 99

START_BASE_S = 10.0
START_PER_BYTE_S = 1.0 / 100_000_000   # 1 s per 100 MB
START_PER_TOKEN_S = 1.0 / 4096         # 1 s per 4096 tokens of context
START_CAP_S = 600.0
UNKNOWN_CTX = 32768

# Spellings of one option, preferred first; the first the image knows is rendered.
SPELLINGS: dict[str, tuple[str, ...]] = {
    "model": ("--model", "-m"),
    "host": ("--host",),
    "port": ("--port",),
    "ctx_size": ("--ctx-size", "-c"),
    "parallel": ("--parallel", "-np"),
    "batch_size": ("--batch-size", "-b"),
    "threads": ("--threads", "-t"),
    "flash_attn": ("--flash-attn", "-fa"),
    "cache_type_k": ("--cache-type-k", "-ctk"),
    "cache_type_v": ("--cache-type-v", "-ctv"),
    "api_key_file": ("--api-key-file",),
    "no_webui": ("--no-webui",),
    "gpu_layers": ("--n-gpu-layers", "--gpu-layers", "-ngl"),
    # Turned off explicitly, so that an upstream change of default cannot turn them on (docs/SECURITY.md).
    "no_agent": ("--no-agent", "-no-ag"),
    "no_mcp_proxy": ("--no-ui-mcp-proxy", "--no-webui-mcp-proxy"),
    "cors_origins": ("--cors-origins",),
    "no_cors_credentials": ("--no-cors-credentials",),
}
# Allowed CORS origin: not an origin at all, so no browser page's Origin ever matches it. llama-server
# answers every request with `Access-Control-Allow-Origin: <this value>` (any value but '*' or
# 'localhost' is sent as is), and its default '*' with credentials echoes any Origin back.
CORS_ORIGINS = "none"
# The manifest key that owns each option (for messages and for extra_args that would override it).
OWNER_KEY: dict[str, str] = {
    "model": "source", "host": "server.host", "port": "server.port", "ctx_size": "server.ctx_size",
    "parallel": "server.parallel", "batch_size": "server.batch_size", "threads": "server.threads",
    "flash_attn": "server.flash_attn", "cache_type_k": "server.cache_type_k",
    "cache_type_v": "server.cache_type_v", "api_key_file": "server.api_key_file",
    "gpu_layers": "profile",
}
# Features the supervisor renders off: every spelling, on and off, so extra_args cannot set them again.
_RENDERED_OFF: dict[str, tuple[str, ...]] = {
    "the web UI": ("--ui", "--webui", "--no-ui", "--no-webui"),
    "the agent's built-in tools and CORS proxy (they read, write and run code)": (
        "-ag", "--agent", "-no-ag", "--no-agent"),
    "the web UI's MCP proxy (it fetches any URL)": (
        "--ui-mcp-proxy", "--webui-mcp-proxy", "--no-ui-mcp-proxy", "--no-webui-mcp-proxy"),
    "CORS for browsers (no web page may call the model)": (
        "--cors-origins", "--cors-credentials", "--no-cors-credentials"),
}
_OFF = frozenset(flag for flags in _RENDERED_OFF.values() for flag in flags)
# Flags the supervisor sets itself, and the fix for each: in extra_args they would break it, leak a
# secret, or turn a feature back on.
RESERVED: dict[str, str] = {
    **{flag: f"remove it and use {OWNER_KEY[opt]}"
       for opt, flags in SPELLINGS.items() if opt in OWNER_KEY for flag in flags},
    **{flag: "remove it and use a profile with gpu.layers" for flag in SPELLINGS["gpu_layers"]},
    "--api-key": "remove it and use server.api_key_file (a key on the command line shows in docker inspect)",
    **{flag: "remove it and use source" for flag in ("--model-url", "-mu", "--hf-repo", "-hf", "-hfr",
                                                     "--hf-file", "-hff")},
    **{flag: f"remove it: the supervisor turns off {what}, see docs/SECURITY.md"
       for what, flags in _RENDERED_OFF.items() for flag in flags},
}
# Old or other spellings -> (replacement tokens, flag the image must know for the replacement to apply).
RENAMES: dict[str, tuple[tuple[str, ...], str]] = {
    "--mlock": (("--load-mode", "mlock"), "--load-mode"),        # llama.cpp folded both into --load-mode
    "--no-mmap": (("--load-mode", "none"), "--load-mode"),
    "--embedding": (("--embeddings",), "--embeddings"),
    "--embeddings": (("--embedding",), "--embedding"),
}
_NUMBER = re.compile(r"^-?[0-9.]+([eE][-+]?[0-9]+)?$")


@dataclass(frozen=True)
class Placement:
    """What a model's profile (or auto) decides: image variant, threads, pinning, memory, GPU."""

    variant: str
    threads: int | None = None
    cpuset: str | None = None
    memory_bytes: int | None = None
    gpu: GpuRequest | None = None
    gpu_layers: int | None = None
    profile_name: str = "auto"


def image_tag(variant: str) -> str:
    return f"{paths.image_repo()}:{variant}"


def model_host_path(manifest: ModelManifest) -> Path:
    """Where the model file is on the host: source.path as given, else the model cache."""
    return modelsrc.host_path(manifest.source)


# Bytes per KV cache element for each cache type (quantized blocks hold 32 values).
KV_ELEMENT_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                    "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}
# Beyond weights and KV cache: compute buffers, the HTTP server, the runtime. Checked on the demo model
# (253 MB file): resident 320 / 339 / 423 MiB at ctx 512 / 4096 / 32768 against 402 / 465 / 969 MiB
# estimated; the estimate stays above, most at long contexts (Gemma 3's sliding-window layers keep
# a smaller KV cache than the full-attention count assumed here).
OVERHEAD_BYTES = 128 * 1024 * 1024
OVERHEAD_FRACTION = 0.10


def estimate_memory(file_size: int, facts: GgufFacts | None, *, ctx_size: int, cache_type_k: str,
                    cache_type_v: str) -> tuple[int, str]:
    """What a model needs loaded: weights + KV cache + overhead, and how that was found."""
    kv = 0
    if facts is not None:
        kv = facts.kv_bytes(ctx_size, k_bytes_per_elem=KV_ELEMENT_BYTES.get(cache_type_k, 2.0),
                            v_bytes_per_elem=KV_ELEMENT_BYTES.get(cache_type_v, 2.0))
    total = int(file_size + kv + OVERHEAD_BYTES + OVERHEAD_FRACTION * file_size)
    mib = 1024 * 1024
    kv_part = f"KV {kv // mib} MiB" if facts is not None else "KV unknown (not a readable GGUF header)"
    return total, f"estimate: file {file_size // mib} MiB + {kv_part} + overhead"


def default_start_timeout(file_size: int, ctx_size: int) -> float:
    """See the module docstring: 10 s + 1 s per 100 MB + 1 s per 4096 tokens, at most 600 s."""
    ctx = ctx_size if ctx_size > 0 else UNKNOWN_CTX
    return min(START_CAP_S, START_BASE_S + max(0, file_size) * START_PER_BYTE_S + ctx * START_PER_TOKEN_S)


def place(profile: ProfileManifest | None, host: HostInfo) -> Placement:
    """The placement for a profile, or for `auto` (profile None): the best variant this host runs."""
    if profile is None:
        variant = hardware.best_variant(host)
        if variant == "cuda":
            return Placement(variant, gpu=GpuRequest("nvidia"), gpu_layers=DEFAULT_GPU_LAYERS)
        return Placement(variant)
    variant = profile.variant
    if variant == "auto":
        variant = "cuda" if profile.gpu is not None else hardware.best_cpu_variant(host)
    gpu, layers = None, None
    if profile.gpu is not None:
        gpu, layers = GpuRequest("nvidia", device_ids=tuple(profile.gpu.device_ids)), profile.gpu.layers
    elif variant == "cuda":
        gpu, layers = GpuRequest("nvidia"), DEFAULT_GPU_LAYERS
    return Placement(variant, profile.threads, profile.cpuset, profile.memory, gpu, layers, profile.name)


def render(
    manifest: ModelManifest,
    *,
    profile: ProfileManifest | None,
    lock: ImageLock,
    host: HostInfo,
    origin: Origin,
    model_path: str,
    file_size: int,
    facts: GgufFacts | None = None,
    api_key_path: str | None = None,
) -> tuple[DesiredModel | None, list[str]]:
    """One model's DesiredModel, or None and its problems.

    model_path and api_key_path are the host paths to mount: load_desired passes
    them resolved through symlinks (see supervisor.artifacts.hostfile).
    """
    problems: list[str] = []
    name = manifest.name
    placement = place(profile, host)
    where_profile = origin.at("profile")
    why_not = hardware.missing_for(placement.variant, host)
    if why_not:
        problems.append(
            f"{where_profile}: model '{name}' needs image variant {placement.variant}, but {why_not}"
            f" (fix: use profile auto or a profile with variant: auto)"
        )
        return None, problems
    record = lock.get(placement.variant)
    if record is None:
        problems.append(
            f"{where_profile}: model '{name}' needs image variant {placement.variant}, which is not in the"
            f" image lock (fix: run 'llama-supervisorctl build {placement.variant}')"
        )
        return None, problems

    server, res = manifest.server, manifest.resources
    argv: list[str] = []

    def add(option: str, *values: str, required: bool = True) -> None:
        flag = next((f for f in SPELLINGS[option] if f in record.flags), None)
        if flag is None:
            if required:
                key = OWNER_KEY.get(option, "")
                problems.append(
                    f"{origin.at(key)}: image {record.tag} ({record.version}) has none of"
                    f" {', '.join(SPELLINGS[option])}, needed for {key or option}"
                    f" (fix: rebuild the image with 'llama-supervisorctl build {record.variant}')"
                )
            return
        argv.extend((flag, *values))

    threads = server.threads or placement.threads or hardware.default_threads(
        host, cpus=res.cpus, cpuset=res.cpuset or placement.cpuset
    )
    add("model", f"{MODEL_DIR}/{manifest.source.filename}")
    add("host", "0.0.0.0")
    add("port", str(CONTAINER_PORT))
    add("ctx_size", str(server.ctx_size))
    add("parallel", str(server.parallel))
    add("batch_size", str(server.batch_size))
    add("threads", str(threads))
    add("flash_attn", server.flash_attn)
    add("cache_type_k", server.cache_type_k)
    add("cache_type_v", server.cache_type_v)
    if server.api_key_file is not None:
        add("api_key_file", API_KEY_TARGET)
    add("no_webui", required=False)
    add("no_agent", required=False)
    add("no_mcp_proxy", required=False)
    add("cors_origins", CORS_ORIGINS, required=False)
    add("no_cors_credentials", required=False)
    if placement.gpu_layers is not None:
        add("gpu_layers", str(placement.gpu_layers))
    problems.extend(check_extra_args(server.extra_args, record, origin))
    argv.extend(server.extra_args)
    if problems:
        return None, problems

    mounts = [Mount(model_path, f"{MODEL_DIR}/{manifest.source.filename}", read_only=True)]
    if server.api_key_file is not None:
        mounts.append(Mount(api_key_path or server.api_key_file, API_KEY_TARGET, read_only=True))
    spec = ContainerSpec(
        model=name,
        image=image_tag(placement.variant),
        image_id=record.image_id,
        argv=tuple(argv),
        model_sha256=manifest.source.sha256,
        mounts=tuple(mounts),
        host_ip=server.host,
        host_port=server.port or 0,
        container_port=CONTAINER_PORT,
        memory_bytes=res.memory if res.memory is not None else placement.memory_bytes,
        pids_limit=res.pids,
        nano_cpus=int(res.cpus * 1e9) if res.cpus is not None else None,
        cpuset=res.cpuset or placement.cpuset,
        gpu=placement.gpu,
        cpu_shares=res.cpu_shares,
        log_max_bytes=manifest.logs.max_size,
        log_max_files=manifest.logs.max_files,
    )
    health = manifest.health
    rs = manifest.restart
    desired = DesiredModel(
        name=name,
        spec=spec,
        health=HealthPolicy(
            interval_s=health.interval,
            timeout_s=health.timeout,
            failures=health.failures,
            start_timeout_s=(
                health.start_timeout
                if health.start_timeout is not None
                else default_start_timeout(file_size, server.ctx_size)
            ),
        ),
        restart=RestartSettings(
            policy=RestartPolicy(rs.policy),
            backoff_initial_s=rs.backoff_initial,
            backoff_max_s=rs.backoff_max,
            max_failures=rs.max_failures,
        ),
        model_path=model_path,
        source_file=origin.file,
        api_key_file=server.api_key_file,
        serving=serving(manifest, spec, placement, file_size, facts),
    )
    return desired, problems


def serving(manifest: ModelManifest, spec: ContainerSpec, placement: Placement, file_size: int,
            facts: GgufFacts | None) -> Serving:
    """Gateway settings and what the model counts against the budgets: its memory limit when it has
    one (the most it can take), else the estimate; on a GPU profile the estimate counts as GPU memory."""
    server = manifest.server
    estimate, basis = estimate_memory(file_size, facts, ctx_size=server.ctx_size,
                                      cache_type_k=server.cache_type_k, cache_type_v=server.cache_type_v)
    memory, memory_basis = (spec.memory_bytes, "limit") if spec.memory_bytes is not None else (estimate, basis)
    return Serving(
        aliases=tuple(manifest.aliases),
        lifecycle=LoadPolicy(manifest.lifecycle),
        idle_ttl_s=manifest.idle_ttl,
        max_queue=manifest.max_queue,
        memory_bytes=memory,
        gpu_memory_bytes=estimate if placement.gpu is not None else 0,
        memory_basis=memory_basis,
    )


def check_extra_args(extra_args: tuple[str, ...], record: ImageRecord, origin: Origin) -> list[str]:
    """A problem for each flag in extra_args that is not on the allowlist (supervisor.render.allowed_flags),
    that the supervisor renders itself, that the image's --help warns about, or that the image does not know.

    llama-server reads every item that starts with '-' in a flag's place as a flag, and takes no
    `--flag=value` items, so each such item is checked as a flag (a value that looks like one is refused).
    """
    problems: list[str] = []
    for i, token in enumerate(extra_args):
        where = origin.at(f"server.extra_args.{i}")
        if not token or any(ord(c) < 32 or ord(c) == 127 for c in token):
            problems.append(f"{where}: extra_args item {i} is empty or holds a control character"
                            f" (fix: one plain argument per item)")
            continue
        if not token.startswith("-") or token == "-" or _NUMBER.match(token):
            continue  # a value
        problem = _flag_problem(token, record)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def _flag_problem(flag: str, record: ImageRecord) -> str | None:
    """Why one extra_args flag is refused, with the fix; None when it is allowed."""
    name, eq, value = flag.partition("=")
    if eq and value.startswith("-") and not _NUMBER.match(value):
        return f"the value of {name} looks like a flag ({value!r}) (fix: give the value as the next item, or remove it)"
    if eq:
        return (f"{flag!r}: llama-server takes no flag=value items and would not start"
                f" (fix: give the value as the next item: {name}, {value})")
    if flag in RESERVED:
        return f"extra_args sets {flag}, which the supervisor renders itself (fix: {RESERVED[flag]})"
    if flag in record.warned_flags:
        return (f"extra_args sets {flag}, whose --help in image {record.tag} ({record.version}) warns against"
                f" untrusted environments (fix: remove it; no manifest may enable it)")
    known = flag in record.flags
    if flag in ALLOWED and known:
        return None
    if known:
        return (f"extra_args sets {flag}, which is not on the allowlist of flags that only tune inference or"
                f" performance (fix: remove it; if it only tunes inference, propose adding it to GROUPS in"
                f" supervisor/render/allowed_flags.py)")
    return (f"{flag} is not a flag of llama-server in image {record.tag} ({record.version})"
            f" (fix: {suggest(flag, record.flags)})")


def suggest(flag: str, known: frozenset[str]) -> str:
    """How to replace a flag the image does not know: a known rename, another spelling, the closest flag
    a manifest may use (an allowed flag, or one the supervisor renders from a manifest key)."""
    rename = RENAMES.get(flag)
    if rename is not None and rename[1] in known:
        return f"use '{' '.join(rename[0])}'"
    for spellings in SPELLINGS.values():
        if flag in spellings:
            other = next((f for f in spellings if f in known), None)
            if other is not None:
                return f"use '{other}'"
    usable = {f for f in known if f in ALLOWED or (f in RESERVED and f not in _OFF)}
    close = difflib.get_close_matches(flag, sorted(usable), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "remove it; 'docker run --rm <image> --help' lists the flags"


def render_all(
    manifests: ManifestSet,
    lock: ImageLock,
    host: HostInfo,
    *,
    file_sizes: Mapping[str, int],
    facts: Mapping[str, GgufFacts | None] | None = None,
    model_paths: Mapping[str, str] | None = None,
    key_paths: Mapping[str, str] | None = None,
) -> tuple[dict[str, DesiredModel], list[str]]:
    """Every model that renders, and the problems of those that do not.

    file_sizes, facts, model_paths and key_paths are by model name (see host_files); a
    model absent from model_paths mounts its path as the manifest gives it.
    """
    desired: dict[str, DesiredModel] = {}
    problems: list[str] = []
    for name in sorted(manifests.models):
        manifest = manifests.models[name]
        profile = None if manifest.profile == "auto" else manifests.profiles.get(manifest.profile)
        model, found = render(
            manifest,
            profile=profile,
            lock=lock,
            host=host,
            origin=manifests.model_origins.get(name, Origin("<unknown>", 1)),
            model_path=(model_paths or {}).get(name) or str(model_host_path(manifest)),
            file_size=file_sizes.get(name, 0),
            facts=(facts or {}).get(name),
            api_key_path=(key_paths or {}).get(name),
        )
        problems.extend(found)
        if model is not None:
            desired[name] = model
    return desired, problems


def load_desired(
    manifests_dir: Path | str, lock: ImageLock, host: HostInfo
) -> tuple[dict[str, DesiredModel], list[str]]:
    """Read the manifests (ManifestError propagates) and check their host files, then render_all."""
    manifests = load_dir(manifests_dir)
    files = host_files(manifests)
    budget = gguf.Budget()     # for every header this read parses together: a thousand hostile files cost one budget
    facts = {name: _facts(Path(files.models.get(name) or model_host_path(m)), files.sizes.get(name, 0), budget)
             for name, m in manifests.models.items() if name not in files.refused}
    desired, problems = render_all(manifests, lock, host, file_sizes=files.sizes, facts=facts,
                                   model_paths=files.models, key_paths=files.keys)
    for name in files.refused:
        desired.pop(name, None)
    return desired, files.problems + problems


_FACTS: dict[tuple[str, int, int], GgufFacts | None] = {}


def _facts(path: Path, size: int, budget: gguf.Budget) -> GgufFacts | None:
    """GGUF facts, read once per file version (path, size, mtime) in a long-lived process."""
    try:
        key = (str(path), size, os.stat(path).st_mtime_ns)
    except OSError:
        return None
    if key in _FACTS:
        return _FACTS[key]
    found = gguf.facts(path, budget)
    if found is not None:       # an unknown may be the shared budget's doing: read it again next time
        if len(_FACTS) > 256:
            _FACTS.clear()
        _FACTS[key] = found
    return found


def stat_sizes(manifests: ManifestSet) -> dict[str, int]:
    """Each model's file size in bytes (0 when the file is absent): the only I/O render needs."""
    sizes = {}
    for name, manifest in manifests.models.items():
        try:
            sizes[name] = os.stat(model_host_path(manifest)).st_size
        except OSError:
            sizes[name] = 0
    return sizes


@dataclass(frozen=True)
class HostFiles:
    """The host files of a set of manifests, resolved and checked (by model name)."""

    sizes: dict[str, int]
    models: dict[str, str]       # resolved model file paths: what is hashed and mounted
    keys: dict[str, str]         # resolved api_key_file paths
    problems: list[str]
    refused: frozenset[str]      # models with a problem here


def host_files(manifests: ManifestSet) -> HostFiles:
    """Resolve and check every model's source file and key file (supervisor.artifacts.hostfile): the I/O render needs."""
    sizes: dict[str, int] = {}
    models: dict[str, str] = {}
    keys: dict[str, str] = {}
    problems: list[str] = []
    refused: set[str] = set()
    for name, manifest in manifests.models.items():
        origin = manifests.model_origins.get(name, Origin("<unknown>", 1))
        key = "source.path" if manifest.source.path else "source"
        f, problem = hostfile.inspect(str(model_host_path(manifest)), what=f"model '{name}': model file")
        if problem:
            problems.append(f"{origin.at(key)}: {problem}")
            refused.add(name)
        models[name], sizes[name] = f.resolved, f.size
        if manifest.server.api_key_file is not None:
            k, problem = hostfile.inspect(manifest.server.api_key_file, what=f"model '{name}': api_key_file",
                                          refused=hostfile.KEY_REFUSED)
            if problem:
                problems.append(f"{origin.at('server.api_key_file')}: {problem}")
                refused.add(name)
            keys[name] = k.resolved
    return HostFiles(sizes, models, keys, problems, frozenset(refused))
