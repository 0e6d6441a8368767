"""What a model needs: its memory estimate (weights + KV cache + overhead) and its default start timeout.

Pure. Default health start_timeout (seconds), when the manifest leaves it null:
    10 + file_size / 100 MB + ctx_size / 4096, capped at 600
(ctx_size 0, the model's own context, counts as 32768; an absent file as 0 bytes), times 20 for an
image that runs under emulation (arm64 through qemu-user on x86-64), capped at 600 too.
"""

from __future__ import annotations

from supervisor.artifacts.gguf import GgufFacts

START_BASE_S = 10.0
START_PER_BYTE_S = 1.0 / 100_000_000   # 1 s per 100 MB
START_PER_TOKEN_S = 1.0 / 4096         # 1 s per 4096 tokens of context
START_CAP_S = 600.0
# An emulated image loads about 17 times slower: the demo model (253 MB, ctx 512) answered /health 16.7 s
# after `docker run` of the arm64 image under qemu-user on this 2-core x86-64 host, against 0.97 s for
# the native image (docs/BENCHMARKS.md); the native budget for it, 12.7 s, would fail every emulated start.
EMULATED_START_FACTOR = 20.0
UNKNOWN_CTX = 32768

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


def default_start_timeout(file_size: int, ctx_size: int, *, emulated: bool = False) -> float:
    """See the module docstring: 10 s + 1 s per 100 MB + 1 s per 4096 tokens (times 20 under emulation),
    at most 600 s."""
    ctx = ctx_size if ctx_size > 0 else UNKNOWN_CTX
    native = START_BASE_S + max(0, file_size) * START_PER_BYTE_S + ctx * START_PER_TOKEN_S
    return min(START_CAP_S, native * (EMULATED_START_FACTOR if emulated else 1.0))
