"""Read the few GGUF header fields a memory estimate needs (layers, KV heads, head sizes, context),
and whether the file carries a chat template.

Only the key/value section at the start of the file is read, with bounds on every
length, so a hostile or truncated file gives `None`, never a huge allocation.
Arrays (the tokenizer's vocabulary: 262k strings for Gemma 3) are skipped, not kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
_MAX_KV = 100_000                  # key/value pairs in one header
_MAX_STR = 16 * 1024 * 1024        # one string's length
_MAX_ARRAY = 50_000_000            # items in one array
# type id -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
CHAT_TEMPLATE = "tokenizer.chat_template"
# Kept as None, not read: only whether the key is there matters (a template runs to kilobytes).
_SKIPPED = frozenset({CHAT_TEMPLATE})


@dataclass(frozen=True)
class GgufFacts:
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    key_length: int           # per head; n_embd / n_head unless the file says otherwise
    value_length: int
    context_length: int       # the model's trained context (ctx_size 0 means this)
    has_chat_template: bool = False   # without one llama-server formats chat requests as ChatML

    def kv_bytes(self, n_ctx: int, *, k_bytes_per_elem: float, v_bytes_per_elem: float) -> int:
        """The KV cache of n_ctx tokens (all slots together: llama-server divides ctx among them)."""
        ctx = n_ctx if n_ctx > 0 else self.context_length
        per_token = self.n_layer * self.n_head_kv * (self.key_length * k_bytes_per_elem
                                                     + self.value_length * v_bytes_per_elem)
        return int(ctx * per_token)


class _Bad(Exception):
    pass


def _read(f: BinaryIO, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise _Bad("truncated")
    return b


def _scalar(f: BinaryIO, fmt: str) -> int | float | bool:
    value: int | float | bool = struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    return value


def _string(f: BinaryIO) -> bytes:
    n = int(_scalar(f, "<Q"))
    if n > _MAX_STR:
        raise _Bad("string too long")
    return _read(f, n)


def _value(f: BinaryIO, vtype: int, *, skip: bool = False) -> object:
    if vtype == _STRING and skip:
        n = int(_scalar(f, "<Q"))
        if n > _MAX_STR:
            raise _Bad("string too long")
        f.seek(n, 1)
        return None
    if vtype in _SCALARS:
        return _scalar(f, _SCALARS[vtype])
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        itype, count = int(_scalar(f, "<I")), int(_scalar(f, "<Q"))
        if count > _MAX_ARRAY:
            raise _Bad("array too long")
        if itype in _SCALARS:
            f.seek(count * struct.calcsize(_SCALARS[itype]), 1)
        elif itype == _STRING:
            for _ in range(count):
                n = int(_scalar(f, "<Q"))
                if n > _MAX_STR:
                    raise _Bad("string too long")
                f.seek(n, 1)
        else:
            raise _Bad(f"array of type {itype}")
        return None
    raise _Bad(f"value type {vtype}")


def read_metadata(path: Path | str) -> dict[str, object] | None:
    """The header's scalar and string values (arrays and the chat template as None: only their keys are
    kept); None if this is no readable GGUF v2/v3."""
    try:
        with open(path, "rb", buffering=1 << 16) as f:
            if _read(f, 4) != MAGIC:
                return None
            version = int(_scalar(f, "<I"))
            if version not in (2, 3):
                return None
            _scalar(f, "<Q")                         # tensor count
            n_kv = int(_scalar(f, "<Q"))
            if n_kv > _MAX_KV:
                return None
            meta: dict[str, object] = {}
            for _ in range(n_kv):
                key = _string(f).decode("utf-8", "replace")
                value = _value(f, int(_scalar(f, "<I")), skip=key in _SKIPPED)
                meta[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return meta
    except (OSError, _Bad, struct.error):
        return None


def facts(path: Path | str) -> GgufFacts | None:
    """The memory-relevant facts of a GGUF file, or None when they cannot be read."""
    meta = read_metadata(path)
    if meta is None:
        return None
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return None

    def num(key: str, default: int | None = None) -> int | None:
        v = meta.get(f"{arch}.{key}", default)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default

    n_layer, n_embd, n_head = num("block_count"), num("embedding_length"), num("attention.head_count")
    if not n_layer or not n_embd or not n_head:
        return None
    n_head_kv = num("attention.head_count_kv", n_head) or n_head
    head = n_embd // n_head
    return GgufFacts(
        architecture=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        key_length=num("attention.key_length", head) or head,
        value_length=num("attention.value_length", head) or head,
        context_length=num("context_length", 4096) or 4096,
        has_chat_template=CHAT_TEMPLATE in meta,
    )
