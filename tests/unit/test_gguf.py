"""The GGUF header reader on files written here: the fields a memory estimate needs, arrays skipped,
and hostile or truncated headers answered with None, never a huge allocation."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from supervisor.artifacts import gguf
from supervisor.render.memory import estimate_memory


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _kv_u32(key: str, v: int) -> bytes:
    return _s(key) + struct.pack("<I", 4) + struct.pack("<I", v)


def write(path: Path, *, kvs: list[bytes], version: int = 3, n_kv: int | None = None) -> Path:
    head = b"GGUF" + struct.pack("<I", version) + struct.pack("<Q", 0) + struct.pack("<Q", len(kvs) if n_kv is None else n_kv)
    path.write_bytes(head + b"".join(kvs))
    return path


def gemma_like(path: Path, *, chat_template: str | None = None) -> Path:
    """A Gemma 3 270M-like header (the demo model's: no chat template), or one with `chat_template`."""
    template = [_s(gguf.CHAT_TEMPLATE) + struct.pack("<I", 8) + _s(chat_template)] if chat_template is not None else []
    vocab = _s("tokenizer.ggml.tokens") + struct.pack("<I", 9) + struct.pack("<I", 8) + struct.pack("<Q", 3)
    vocab += _s("<pad>") + _s("hello") + _s("world")
    scores = _s("tokenizer.ggml.scores") + struct.pack("<I", 9) + struct.pack("<I", 6) + struct.pack("<Q", 3)
    scores += struct.pack("<3f", 0.0, 1.0, 2.0)
    return write(path, kvs=[
        _s("general.architecture") + struct.pack("<I", 8) + _s("gemma3"),
        vocab, scores, *template,
        _kv_u32("gemma3.block_count", 18), _kv_u32("gemma3.embedding_length", 640),
        _kv_u32("gemma3.attention.head_count", 4), _kv_u32("gemma3.attention.head_count_kv", 1),
        _kv_u32("gemma3.attention.key_length", 256), _kv_u32("gemma3.attention.value_length", 256),
        _kv_u32("gemma3.context_length", 32768),
    ])


def test_reads_the_memory_fields_past_the_vocabulary(tmp_path: Path) -> None:
    f = gguf.facts(gemma_like(tmp_path / "m.gguf"))
    assert f == gguf.GgufFacts("gemma3", n_layer=18, n_embd=640, n_head=4, n_head_kv=1, key_length=256,
                               value_length=256, context_length=32768)
    # 18 layers x 1 KV head x (256 + 256) x 2 bytes (f16) = 18 KiB per token
    assert f.kv_bytes(2048, k_bytes_per_elem=2, v_bytes_per_elem=2) == 2048 * 18 * 1024
    assert f.kv_bytes(0, k_bytes_per_elem=2, v_bytes_per_elem=2) == 32768 * 18 * 1024, "ctx 0: the model's own"


def test_hostile_or_broken_headers_give_none(tmp_path: Path) -> None:
    assert gguf.facts(tmp_path / "absent.gguf") is None
    (tmp_path / "text.gguf").write_text("not a gguf")
    assert gguf.facts(tmp_path / "text.gguf") is None
    assert gguf.facts(write(tmp_path / "v9.gguf", kvs=[], version=9)) is None
    assert gguf.facts(write(tmp_path / "many.gguf", kvs=[], n_kv=10**12)) is None
    huge = _s("x")[:0] + struct.pack("<Q", 2**40) + b"key"
    assert gguf.facts(write(tmp_path / "huge.gguf", kvs=[huge], n_kv=1)) is None
    whole = gemma_like(tmp_path / "whole.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) // 2])
    assert gguf.facts(tmp_path / "cut.gguf") is None
    assert gguf.facts(write(tmp_path / "noarch.gguf", kvs=[_kv_u32("llama.block_count", 2)])) is None


def test_estimate_is_file_plus_kv_plus_overhead_and_says_how(tmp_path: Path) -> None:
    f = gguf.facts(gemma_like(tmp_path / "m.gguf"))
    size = 253_113_024
    total, basis = estimate_memory(size, f, ctx_size=2048, cache_type_k="q8_0", cache_type_v="f16")
    kv = 2048 * 18 * (256 * 34 / 32 + 256 * 2)
    assert total == int(size + kv + 128 * 2**20 + 0.1 * size)
    assert basis == "estimate: file 241 MiB + KV 27 MiB + overhead"
    unknown, why = estimate_memory(size, None, ctx_size=2048, cache_type_k="f16", cache_type_v="f16")
    assert unknown == int(size + 128 * 2**20 + 0.1 * size) and "KV unknown" in why


def test_says_whether_a_chat_template_is_there_without_keeping_it(tmp_path: Path) -> None:
    assert gguf.facts(gemma_like(tmp_path / "base.gguf"), whole=True).has_chat_template is False  # type: ignore[union-attr]
    big = "{% for m in messages %}<start_of_turn>{{ m.content }}<end_of_turn>{% endfor %}" * 20_000   # 1.6 MB
    path = gemma_like(tmp_path / "it.gguf", chat_template=big)
    f = gguf.facts(path, whole=True)
    assert f is not None and f.has_chat_template and f.n_layer == 18, "and the fields after it are read"
    meta = gguf.read_header(path, whole=True)
    assert isinstance(meta, dict) and gguf.CHAT_TEMPLATE in meta and meta[gguf.CHAT_TEMPLATE] is None
# --- issue 15, item 7: the total work is bounded, not only each value -------------------------

def _string_array(key: str, count: int) -> bytes:
    return _s(key) + struct.pack("<I", 9) + struct.pack("<I", 8) + struct.pack("<Q", count)


def sparse_bomb(path: Path, *, count: int, arrays: int = 2, fields_first: bool = False) -> Path:
    """`arrays` arrays of `count` empty strings: all-zero bytes, so the file is sparse (no disk used).
    Each array is its own sparse run; the fields follow them (or come first)."""
    fields = [_s("general.architecture") + struct.pack("<I", 8) + _s("llama"),
              _kv_u32("llama.block_count", 2), _kv_u32("llama.embedding_length", 64),
              _kv_u32("llama.attention.head_count", 4)]
    head = b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 0) + struct.pack("<Q", arrays + len(fields))
    with open(path, "wb") as f:
        f.write(head)
        if fields_first:
            f.write(b"".join(fields))
        for i in range(arrays):
            f.write(_string_array(f"tokenizer.bomb{i}", count))
            f.seek(8 * count, 1)          # zeros: count empty strings, as a hole
        if not fields_first:
            f.write(b"".join(fields))
    return path


@pytest.mark.timing
def test_a_header_of_100m_empty_strings_is_unknown_within_the_budget(tmp_path: Path) -> None:
    bomb = sparse_bomb(tmp_path / "bomb.gguf", count=50_000_000)          # 800 MB, 100 M strings
    t0 = time.monotonic()
    found = gguf.read_facts(bomb)
    assert time.monotonic() - t0 < 1.0                                     # before: 57 s
    assert isinstance(found, gguf.Unknown) and "budget" in found.reason


@pytest.mark.timing
def test_many_arrays_under_each_bound_still_share_one_budget(tmp_path: Path) -> None:
    # 40 arrays of 100,000 strings: each within every per-value bound, 4 M strings in all
    bomb = sparse_bomb(tmp_path / "wide.gguf", count=100_000, arrays=40)
    t0 = time.monotonic()
    found = gguf.read_facts(bomb)
    assert time.monotonic() - t0 < 2.0
    assert isinstance(found, gguf.Unknown) and "budget" in found.reason


def test_one_budget_covers_every_file_of_a_read(tmp_path: Path) -> None:
    budget = gguf.Budget()
    results = [gguf.read_facts(sparse_bomb(tmp_path / f"m{i}.gguf", count=900_000, arrays=1), budget)
               for i in range(4)]
    assert isinstance(results[0], gguf.GgufFacts) and isinstance(results[1], gguf.GgufFacts)
    assert all(isinstance(r, gguf.Unknown) and "budget" in r.reason for r in results[2:])


def test_reading_stops_once_the_fields_are_known(tmp_path: Path) -> None:
    bomb = sparse_bomb(tmp_path / "after.gguf", count=50_000_000, fields_first=True)
    budget = gguf.Budget()
    found = gguf.read_facts(bomb, budget)
    assert isinstance(found, gguf.GgufFacts) and found.n_layer == 2
    assert gguf.MAX_ITEMS - budget.items == 5                              # the entries, not one string


def test_a_header_past_its_byte_bound_is_unknown(tmp_path: Path) -> None:
    path = tmp_path / "long.gguf"
    with open(path, "wb") as f:                  # six 15 MiB string values, each a hole of zeros
        f.write(b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 0) + struct.pack("<Q", 6))
        for i in range(6):
            f.write(_s(f"general.k{i}") + struct.pack("<I", 8) + struct.pack("<Q", 15 << 20))
            f.seek(15 << 20, 1)
        f.write(b"\0")
    found = gguf.read_facts(path)
    assert isinstance(found, gguf.Unknown) and "64 MiB" in found.reason
