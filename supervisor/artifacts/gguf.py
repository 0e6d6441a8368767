"""Read the few GGUF header fields a memory estimate needs (layers, KV heads, head sizes, context),
and, when asked (`whole=True`, for `validate`), whether the file carries a chat template.

Only the key/value section at the start of the file is read, with bounds on every
length, so a hostile or truncated file gives `None`, never a huge allocation.
Arrays (the tokenizer's vocabulary: 262k strings for Gemma 3) are skipped, not kept.

The total work is bounded too, not only each value (issue 15: an 800 MB header of
100 M empty strings held a manifest read for 57 s): a `Budget` counts the entries and
array items visited and the header bytes passed, across every file of one manifest
read; past it the facts are unknown, with the reason. Reading stops as soon as the
fields are known and a tokenizer array (written after the architecture's keys) begins, so a real
model file costs a few dozen entries. The chat template is written after the tokenizer's
arrays, so `whole=True` walks them too (within the same budget) and skips the template's
value by seeking: only whether the key is there matters.
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
MAX_ITEMS = 2_000_000              # entries + string-array items visited per Budget (~1 s of Python)
MAX_HEADER_BYTES = 64 * 1024 * 1024   # how far into one file the header may reach
MAX_BYTES = 256 * 1024 * 1024         # bytes read (strings) per Budget
# type id -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_CHUNK = 1 << 20
# The fields `facts` cannot do without, after "<arch>.": once all are read, the rest may be skipped.
_REQUIRED = ("block_count", "embedding_length", "attention.head_count")
CHAT_TEMPLATE = "tokenizer.chat_template"


class Budget:
    """What the reads sharing it may still visit (one manifest read): entries and string-array items, bytes."""

    def __init__(self, items: int = MAX_ITEMS, bytes_: int = MAX_BYTES) -> None:
        self.items = items
        self.bytes = bytes_

    def spend(self, n: int = 1) -> None:
        self.items -= n
        if self.items < 0:
            raise _Bad("the work budget for GGUF headers (entries and array items) is spent")

    def spend_bytes(self, n: int) -> None:
        self.bytes -= n
        if self.bytes < 0:
            raise _Bad("the byte budget for GGUF headers is spent")


@dataclass(frozen=True)
class Unknown:
    """The facts could not be read; `reason` says why (shown in the memory estimate's basis)."""

    reason: str


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
    has_chat_template: bool | None = None   # None: not looked for (whole=False); without one llama-server uses ChatML
    sliding_window: int = 0   # tokens of sliding-window attention (<arch>.attention.sliding_window), 0: none

    @property
    def swa(self) -> bool:
        """Sliding-window attention: a saved KV cache is reused only when the whole window is kept (--swa-full)."""
        return self.sliding_window > 0

    def kv_bytes(self, n_ctx: int, *, k_bytes_per_elem: float, v_bytes_per_elem: float) -> int:
        """The KV cache of n_ctx tokens (all slots together: llama-server divides ctx among them)."""
        ctx = n_ctx if n_ctx > 0 else self.context_length
        per_token = self.n_layer * self.n_head_kv * (self.key_length * k_bytes_per_elem
                                                     + self.value_length * v_bytes_per_elem)
        return int(ctx * per_token)


class _Bad(Exception):
    pass


class _Reader:
    """One header's reads, within MAX_HEADER_BYTES of the file's start and the shared budget."""

    def __init__(self, f: BinaryIO, budget: Budget) -> None:
        self.f = f
        self.budget = budget

    def _check_end(self) -> None:
        if self.f.tell() > MAX_HEADER_BYTES:
            raise _Bad(f"header reaches past {MAX_HEADER_BYTES >> 20} MiB")

    def read(self, n: int) -> bytes:
        if self.f.tell() + n > MAX_HEADER_BYTES:
            raise _Bad(f"header reaches past {MAX_HEADER_BYTES >> 20} MiB")
        self.budget.spend_bytes(n)
        b = self.f.read(n)
        if len(b) != n:
            raise _Bad("truncated")
        return b

    def skip(self, n: int) -> None:
        self.f.seek(n, 1)
        self._check_end()

    def skip_strings(self, count: int) -> None:
        """Pass `count` length-prefixed strings, reading the file in chunks (a vocabulary: ~0.2 s a million)."""
        start = self.f.tell()
        base, off, chunk = start, 0, b""        # chunk holds the file's bytes from `base`; `off` is the cursor
        unpack = _U64.unpack_from
        for _ in range(count):
            if off + 8 > len(chunk):
                base += off
                if base > MAX_HEADER_BYTES:
                    raise _Bad(f"header reaches past {MAX_HEADER_BYTES >> 20} MiB")
                self.f.seek(base)
                chunk, off = self.f.read(_CHUNK), 0
                if len(chunk) < 8:
                    raise _Bad("truncated")
            (n,) = unpack(chunk, off)
            if n > _MAX_STR:
                raise _Bad("string too long")
            off += 8 + n
        end = base + off
        self.budget.spend_bytes(end - start)
        if end > MAX_HEADER_BYTES:
            raise _Bad(f"header reaches past {MAX_HEADER_BYTES >> 20} MiB")
        self.f.seek(end)

    def scalar(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]
        return value

    def string(self) -> bytes:
        n = int(self.scalar("<Q"))
        if n > _MAX_STR:
            raise _Bad("string too long")
        return self.read(n)

    def value(self, vtype: int) -> object:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = int(self.scalar("<I")), int(self.scalar("<Q"))
            if count > _MAX_ARRAY:
                raise _Bad("array too long")
            if itype in _SCALARS:
                self.skip(count * struct.calcsize(_SCALARS[itype]))
            elif itype == _STRING:
                self.budget.spend(count)        # before the walk: a count past the budget costs nothing
                self.skip_strings(count)
            else:
                raise _Bad(f"array of type {itype}")
            return None
        raise _Bad(f"value type {vtype}")


def _has_required(meta: dict[str, object]) -> bool:
    arch = meta.get("general.architecture")
    return isinstance(arch, str) and all(f"{arch}.{k}" in meta for k in _REQUIRED)


def read_header(path: Path | str, budget: Budget | None = None, *, whole: bool = False) -> dict[str, object] | Unknown:
    """The header's scalar and string values (arrays and the chat template as None), up to the first tokenizer
    array after the fields `facts` needs (every entry with `whole`); Unknown(reason) if this is no readable
    GGUF v2/v3 or the budget ran out."""
    budget = Budget() if budget is None else budget
    try:
        with open(path, "rb", buffering=1 << 16) as f:
            r = _Reader(f, budget)
            if r.read(4) != MAGIC:
                return Unknown("not a GGUF file")
            version = int(r.scalar("<I"))
            if version not in (2, 3):
                return Unknown(f"GGUF version {version} (2 or 3 are read)")
            r.scalar("<Q")                         # tensor count
            n_kv = int(r.scalar("<Q"))
            if n_kv > _MAX_KV:
                return Unknown(f"{n_kv} header entries (at most {_MAX_KV})")
            meta: dict[str, object] = {}
            for _ in range(n_kv):
                budget.spend()
                key = r.string().decode("utf-8", "replace")
                vtype = int(r.scalar("<I"))
                if vtype == _ARRAY and not whole and _has_required(meta) and key.startswith("tokenizer."):
                    break                          # the tokenizer's arrays: what facts need is known
                if key == CHAT_TEMPLATE and vtype == _STRING:
                    n = int(r.scalar("<Q"))        # kilobytes of Jinja: its presence is the fact
                    if n > _MAX_STR:
                        raise _Bad("string too long")
                    r.skip(n)
                    meta[key] = None
                    continue
                value = r.value(vtype)
                meta[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return meta
    except OSError as e:
        return Unknown(f"cannot read it: {e.strerror or e}")
    except (_Bad, struct.error) as e:
        return Unknown(f"unreadable GGUF header: {e}")


def read_metadata(path: Path | str, budget: Budget | None = None) -> dict[str, object] | None:
    """read_header, None instead of Unknown."""
    meta = read_header(path, budget)
    return None if isinstance(meta, Unknown) else meta


def read_facts(path: Path | str, budget: Budget | None = None, *, whole: bool = False) -> GgufFacts | Unknown:
    """The memory-relevant facts of a GGUF file (and with `whole`, has_chat_template), or Unknown(reason)."""
    meta = read_header(path, budget, whole=whole)
    if isinstance(meta, Unknown):
        return meta
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return Unknown("no general.architecture in the header")

    def num(key: str, default: int | None = None) -> int | None:
        v = meta.get(f"{arch}.{key}", default)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default

    n_layer, n_embd, n_head = num("block_count"), num("embedding_length"), num("attention.head_count")
    if not n_layer or not n_embd or not n_head:
        return Unknown(f"no {arch}.block_count, embedding_length or attention.head_count in the header")
    n_head_kv = num("attention.head_count_kv", n_head) or n_head
    head = n_embd // n_head
    return GgufFacts(
        architecture=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        key_length=num("attention.key_length", head) or head,
        value_length=num("attention.value_length", head) or head,
        context_length=num("context_length", 4096) or 4096,
        has_chat_template=(CHAT_TEMPLATE in meta) if whole else None,
        sliding_window=max(0, num("attention.sliding_window", 0) or 0),
    )


def facts(path: Path | str, budget: Budget | None = None, *, whole: bool = False) -> GgufFacts | None:
    """read_facts, None when the facts cannot be read."""
    f = read_facts(path, budget, whole=whole)
    return None if isinstance(f, Unknown) else f
