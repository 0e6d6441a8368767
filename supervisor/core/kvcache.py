"""KV caches kept across stops (issue 17): the file names, what to save, what to evict. Pure.

A model whose cache is kept saves each slot that holds a prompt (llama-server's
`POST /slots/<id>?action=save`) when it is stopped gracefully, and restores it on its
next start before it takes requests. The files live per model and per config key
(the config hash of the model as rendered without its cache directory), so a changed
model never restores a cache built for another one:

    <kv dir>/<model>/<key>/index.json          the daemon's record of each file (size, SHA-256, last use)
    <kv dir>/<model>/<key>/slots/slot<N>.bin   llama-server's files; the only directory it may write
    <kv dir>/<model>/<key>/slots/slot<N>.tmp   a save in progress: renamed to .bin once checked, else removed

Only the daemon names files (`final_name`, `temp_name`). A file the index does not
name, or whose size or hash differs from it, is never restored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SLOT_DIR = "slots"
INDEX = "index.json"
_FINAL = re.compile(r"^slot(0|[1-9][0-9]{0,2})\.bin$")
KEY_LEN = 16                       # hex digits of the config key in a directory name


def final_name(slot_id: int) -> str:
    return f"slot{slot_id}.bin"


def temp_name(slot_id: int) -> str:
    return f"slot{slot_id}.tmp"


def slot_of(name: str) -> int | None:
    """The slot a final file name is for; None for any name the daemon did not choose."""
    m = _FINAL.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class SlotState:
    """One slot as llama-server's GET /slots shows it."""

    id: int
    n_tokens: int
    processing: bool


def parse_slots(body: object, *, max_slots: int = 256) -> list[SlotState]:
    """GET /slots' JSON -> the slots it names (malformed items are left out, at most `max_slots`)."""
    if not isinstance(body, list):
        return []
    out: list[SlotState] = []
    for item in body[:max_slots]:
        if not isinstance(item, dict):
            continue
        sid, n = item.get("id"), item.get("n_prompt_tokens", 0)
        if not isinstance(sid, int) or isinstance(sid, bool) or not 0 <= sid < max_slots:
            continue
        n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0
        out.append(SlotState(sid, n, bool(item.get("is_processing"))))
    return out


def to_save(slots: Iterable[SlotState]) -> list[SlotState]:
    """The slots worth a file: holding a prompt and idle (a busy slot's save would wait for it)."""
    return [s for s in slots if s.n_tokens > 0 and not s.processing]


SAVE_FIXED_S = 0.25    # what a save costs beside its size (round trip, file creation, hash): assumed, not learned


def save_rate(took_s: float, n_tokens: int) -> float:
    """Seconds per token a save showed, its fixed cost taken out. A small save is mostly that cost and says
    nothing of a large one: 30 ms for 2 tokens, read as 15 ms a token, had a 1,347-token save expected to
    take 20 s and skipped with 4.5 s left."""
    return max(0.0, took_s - SAVE_FIXED_S) / max(1, n_tokens)


def fits(n_tokens: int, seconds_per_token: float | None, left_s: float) -> bool:
    """Whether a save of `n_tokens` is expected to end in `left_s`: the fixed cost plus the rate the
    model's last save showed (none seen: it is tried, bounded by the deadline anyway)."""
    if left_s <= 0:
        return False
    return seconds_per_token is None or SAVE_FIXED_S + n_tokens * seconds_per_token <= left_s


@dataclass(frozen=True)
class Entry:
    """One kept file."""

    model: str
    key: str
    slot: int
    bytes: int
    tokens: int
    used: float        # wall-clock seconds of its last save or restore (it survives daemon restarts)


def evict(entries: Iterable[Entry], *, per_model: Mapping[str, int], total: int,
          default_per_model: int = 0) -> list[Entry]:
    """The least recently used files to remove so that each model's files fit its bound (`per_model`,
    `default_per_model` for a model not named there; 0: no files at all) and all of them `total`."""
    alive = sorted(entries, key=lambda e: (e.used, e.model, e.key, e.slot))
    gone: list[Entry] = []
    by_model: dict[str, int] = {}
    for e in alive:
        by_model[e.model] = by_model.get(e.model, 0) + e.bytes
    for e in alive:                                   # oldest first
        bound = per_model.get(e.model, default_per_model)
        if by_model[e.model] > bound:
            gone.append(e)
            by_model[e.model] -= e.bytes
    kept = [e for e in alive if e not in gone]
    size = sum(e.bytes for e in kept)
    for e in kept:
        if size <= total:
            break
        gone.append(e)
        size -= e.bytes
    return gone
