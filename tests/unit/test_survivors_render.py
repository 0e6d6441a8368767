"""What a model counts against the memory budget includes its KV cache when its GGUF header is readable
(issue 22's survivor at render.py: load_desired must hand the header facts to render_all)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from supervisor.artifacts.hardware import HostInfo
from supervisor.artifacts.lock import ImageLock, ImageRecord
from supervisor.render.memory import OVERHEAD_BYTES
from supervisor.render.desired import load_desired

FLAGS = frozenset({"--model", "--host", "--port", "--ctx-size", "--parallel", "--batch-size", "--threads",
                   "--flash-attn", "--cache-type-k", "--cache-type-v", "--no-webui", "--jinja", "--n-gpu-layers"})
LOCK = ImageLock({"cpu-avx2": ImageRecord(
    variant="cpu-avx2", tag="llama-supervisor/llama-server:cpu-avx2", image_id="sha256:cpu-avx2-id",
    binary_sha256="b" * 64, version="version: 7000 (test)", build_number=7000, flags=FLAGS,
    source_sha256="s" * 64, built_at="2025-01-01T00:00:00Z")})
HOST = HostInfo(cores=2, memory_bytes=8 << 30, arch="x86_64",
                cpu_flags=frozenset({"avx2", "fma", "f16c", "bmi2"}))


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _u32(key: str, v: int) -> bytes:
    return _s(key) + struct.pack("<I", 4) + struct.pack("<I", v)


def write_gguf(path: Path) -> Path:
    """A GGUF v3 header with the fields the estimate reads: 18 layers x 1 KV head x (256 + 256)."""
    kvs = [_s("general.architecture") + struct.pack("<I", 8) + _s("gemma3"),
           _u32("gemma3.block_count", 18), _u32("gemma3.embedding_length", 640),
           _u32("gemma3.attention.head_count", 4), _u32("gemma3.attention.head_count_kv", 1),
           _u32("gemma3.attention.key_length", 256), _u32("gemma3.attention.value_length", 256),
           _u32("gemma3.context_length", 32768)]
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs) + b"\0" * 4096)
    return path


@pytest.fixture(autouse=True)
def default_image_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_SUPERVISOR_IMAGE_REPO", raising=False)


def test_load_desired_counts_the_kv_cache_from_the_gguf_header(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "m.gguf")
    (tmp_path / "m.yaml").write_text(
        "kind: model\nname: m\nprofile: auto\n"
        f"source: {{path: {model}, sha256: {'ef' * 32}}}\n"
        "server: {port: 8081, ctx_size: 8192, cache_type_k: f16, cache_type_v: f16}\n")
    desired, problems = load_desired(tmp_path, LOCK, HOST)
    assert problems == []
    serving = desired["m"].serving
    kv = 8192 * 18 * (256 + 256) * 2                    # 144 MiB at f16
    size = model.stat().st_size
    assert serving.memory_basis == f"estimate: file 0 MiB + KV {kv >> 20} MiB + overhead"
    assert serving.memory_bytes == int(size + kv + OVERHEAD_BYTES + 0.1 * size)
