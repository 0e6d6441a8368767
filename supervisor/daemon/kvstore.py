"""The kept KV cache files on disk (core/kvcache.py has the layout and the pure decisions).

Runs on the loop thread (saves, before a stop) and on a probe thread (restores, before a model takes
requests); one lock guards the index files and the entries. The daemon names every file: llama-server
writes `slot<N>.tmp` into the one directory it may write, the daemon checks its size, hashes it and
renames it to `slot<N>.bin`, then records size and SHA-256 in `index.json` (written by the daemon
only, beside the container's directory, atomically). A restore reads only a file the index names with
the size and hash recorded, so a half-written, truncated, corrupted or planted file is removed, never
restored. Eviction removes the least recently used files past each model's bound and the total.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from supervisor.artifacts.hashing import sha256_file
from supervisor.core import kvcache
from supervisor.core.kvcache import Entry
from supervisor.core.spec import KvCache

log = structlog.get_logger("supervisor.daemon.kv")

MAX_INDEX_BYTES = 64 * 1024
DEFAULT_TOTAL_BYTES = 8 * 1024**3


@dataclass(frozen=True)
class Checked:
    """A file to restore (`path`), or why not (`problem`)."""

    slot: int
    path: Path | None
    entry: Entry | None
    problem: str = ""


class KvStore:
    def __init__(self, root: Path, *, total_bytes: int = DEFAULT_TOTAL_BYTES, owner: tuple[int, int] | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.root = root
        self.total_bytes = total_bytes
        self.owner = owner                   # uid, gid that must own the slots directory (None: the daemon's)
        self._wall = wall
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, int], Entry] = {}
        self._bounds: dict[str, int] = {}
        self._scanned = False
        self._bounded = False                # no eviction before the manifests gave the bounds

    # --- directories ---------------------------------------------------------------------------------

    def prepare(self, kv: KvCache) -> None:
        """Before a start: the slots directory exists, owned by the server's uid, holding only files the
        index names (a save cut short leaves a .tmp; anything else was not written through the daemon)."""
        key_dir = Path(kv.dir)
        slots = key_dir / kvcache.SLOT_DIR
        with self._lock:
            self._scan()
            slots.mkdir(parents=True, exist_ok=True, mode=0o700)
            _own_parents(self.root, key_dir)
            if self.owner is not None:
                os.chown(slots, *self.owner)
            os.chmod(slots, 0o700)
            index = self._read_index(key_dir)
            for p in slots.iterdir():
                sid = kvcache.slot_of(p.name)
                if sid is None or str(sid) not in index:
                    why = "a save cut short" if p.name.endswith(".tmp") else "not written through the daemon"
                    log.warning("kv cache: removing a file", file=str(p), reason=why)
                    _unlink(p)

    # --- saves ------------------------------------------------------------------------------------------

    def commit(self, model: str, kv: KvCache, slot: int, *, n_tokens: int, n_written: int) -> Entry | None:
        """After llama-server saved slot `slot` to its temp name: check the size it reported, hash, rename,
        record, then evict what is over the bounds. None (and the temp file removed) when it does not check."""
        key_dir = Path(kv.dir)
        tmp = key_dir / kvcache.SLOT_DIR / kvcache.temp_name(slot)
        final = key_dir / kvcache.SLOT_DIR / kvcache.final_name(slot)
        try:
            size = tmp.stat().st_size
        except OSError as e:
            log.warning("kv cache: save left no file", model=model, slot=slot, error=e.strerror or str(e))
            return None
        if size != n_written or size == 0:
            log.warning("kv cache: save discarded", model=model, slot=slot,
                        reason=f"{size} bytes on disk, llama-server reported {n_written}")
            _unlink(tmp)
            return None
        digest = sha256_file(tmp)
        os.replace(tmp, final)
        entry = Entry(model=model, key=kv.key, slot=slot, bytes=size, tokens=n_tokens, used=self._wall())
        with self._lock:
            self._scan()
            self._bounds[model] = kv.max_bytes
            index = self._read_index(key_dir)
            index[str(slot)] = {"bytes": size, "tokens": n_tokens, "sha256": digest, "used": entry.used}
            self._write_index(key_dir, index)
            self._entries[(model, kv.key, slot)] = entry
            self._evict_locked()
        return entry

    # --- restores ---------------------------------------------------------------------------------------

    def restorable(self, model: str, kv: KvCache) -> list[Checked]:
        """Each file the index names for this model and key, checked (size, SHA-256) or with its problem;
        a file with a problem is removed at once."""
        key_dir = Path(kv.dir)
        with self._lock:
            self._scan()
            index = self._read_index(key_dir)
        out: list[Checked] = []
        for sid_text, rec in sorted(index.items()):
            sid = int(sid_text)
            path = key_dir / kvcache.SLOT_DIR / kvcache.final_name(sid)
            problem = _check(path, rec)
            entry = self._entries.get((model, kv.key, sid))
            if problem:
                log.warning("kv cache: not restored; served cold", model=model, slot=sid, file=str(path),
                            reason=problem)
                self.drop(model, kv, sid)
                out.append(Checked(sid, None, entry, problem))
            else:
                out.append(Checked(sid, path, entry))
        return out

    def touch(self, model: str, kv: KvCache, slot: int) -> None:
        """A file was restored: it is the most recently used."""
        now = self._wall()
        with self._lock:
            e = self._entries.get((model, kv.key, slot))
            if e is not None:
                self._entries[(model, kv.key, slot)] = replace(e, used=now)
            index = self._read_index(Path(kv.dir))
            if str(slot) in index:
                index[str(slot)]["used"] = now
                self._write_index(Path(kv.dir), index)

    def drop(self, model: str, kv: KvCache, slot: int) -> None:
        """Remove one file and its index record (a restore that failed)."""
        key_dir = Path(kv.dir)
        with self._lock:
            self._remove_locked(model, kv.key, key_dir, slot)

    # --- what is kept -----------------------------------------------------------------------------------

    def usage(self) -> dict[str, tuple[int, int]]:
        """model -> (tokens, bytes) of its files under every key."""
        with self._lock:
            self._scan()
            out: dict[str, tuple[int, int]] = {}
            for e in self._entries.values():
                t, b = out.get(e.model, (0, 0))
                out[e.model] = (t + e.tokens, b + e.bytes)
            return out

    def set_bounds(self, bounds: Mapping[str, int]) -> None:
        """Each model's bound as the manifests give it now (a model not named keeps no files)."""
        with self._lock:
            self._scan()
            self._bounds = dict(bounds)
            self._bounded = True
            self._evict_locked()

    # --- inside the lock --------------------------------------------------------------------------------

    def _scan(self) -> None:
        """Once: the files every index under the root records (they survive daemon restarts)."""
        if self._scanned:
            return
        self._scanned = True
        if not self.root.is_dir():
            return
        for index_path in sorted(self.root.glob(f"*/*/{kvcache.INDEX}")):
            key_dir = index_path.parent
            model, key = key_dir.parent.name, key_dir.name
            for sid_text, rec in self._read_index(key_dir).items():
                sid = int(sid_text)
                self._entries[(model, key, sid)] = Entry(model, key, sid, int(rec["bytes"]), int(rec["tokens"]),
                                                         float(rec["used"]))
                self._bounds.setdefault(model, 0)

    def _evict_locked(self) -> None:
        if not self._bounded:
            return
        gone = kvcache.evict(self._entries.values(), per_model=self._bounds, total=self.total_bytes,
                             default_per_model=0)
        for e in gone:
            log.info("kv cache: evicted", model=e.model, key=e.key, slot=e.slot, bytes=e.bytes,
                     reason="over its bounds (least recently used first)")
            self._remove_locked(e.model, e.key, self.root / e.model / e.key, e.slot)

    def _remove_locked(self, model: str, key: str, key_dir: Path, slot: int) -> None:
        self._entries.pop((model, key, slot), None)
        _unlink(key_dir / kvcache.SLOT_DIR / kvcache.final_name(slot))
        index = self._read_index(key_dir)
        index.pop(str(slot), None)
        if index:
            self._write_index(key_dir, index)
        else:
            _unlink(key_dir / kvcache.INDEX)      # the directories stay: a running server may have them mounted

    def _read_index(self, key_dir: Path) -> dict[str, dict[str, float | int | str]]:
        path = key_dir / kvcache.INDEX
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_INDEX_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.warning("kv cache: index unreadable; its files are not restored", file=str(path),
                        error=e.strerror or str(e))
            return {}
        try:
            data = json.loads(raw) if len(raw) <= MAX_INDEX_BYTES else None
        except ValueError:
            data = None
        out: dict[str, dict[str, float | int | str]] = {}
        if isinstance(data, dict):
            for k, v in data.items():
                if isinstance(k, str) and kvcache.slot_of(f"slot{k}.bin") is not None and _record_ok(v):
                    out[k] = v
        if not isinstance(data, dict) or len(out) != len(data):
            log.warning("kv cache: index damaged; keeping only its good records", file=str(path))
        return out

    def _write_index(self, key_dir: Path, index: Mapping[str, object]) -> None:
        path = key_dir / kvcache.INDEX
        tmp = key_dir / (kvcache.INDEX + ".tmp")
        with open(tmp, "w") as f:
            json.dump(index, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _record_ok(v: object) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("tokens"), int)
            and isinstance(v.get("sha256"), str) and isinstance(v.get("used"), (int, float)))


def _check(path: Path, rec: Mapping[str, object]) -> str:
    """Why the file may not be restored ('' when it may)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if size != rec["bytes"]:
        return f"truncated or grown: {size} bytes, {rec['bytes']} saved"
    if sha256_file(path) != rec["sha256"]:
        return "corrupt: its SHA-256 differs from the one recorded at save"
    return ""


def _own_parents(root: Path, key_dir: Path) -> None:
    """The directories above the slots are the daemon's, readable (not writable) by the server's uid."""
    for d in (root, key_dir.parent, key_dir):
        try:
            os.chmod(d, 0o755)
        except OSError:
            pass


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(p, ignore_errors=True)
