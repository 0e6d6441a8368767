"""Per-model failure counts and FATAL, kept across daemon restarts in one small JSON file.

    <state dir>/models.<instance>.state.json   {"version": 1, "models": {NAME: {"config_hash", "failures", "fatal"}}}

A crash-looping model is not retried on every daemon restart: the next daemon
reads what this one recorded, for the same config hash only (a manifest change
forgets it). An explicit start resets the count, which writes the entry away.
Written atomically (temporary file, fsync, rename) and only when an entry
changes; a file that cannot be read is logged and ignored (the daemon starts
with clean counts rather than not at all). Pure read/write: the loop decides.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("supervisor.daemon.statefile")

VERSION = 1
MAX_BYTES = 1 << 20          # a few hundred bytes per model; anything bigger is not ours
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class Entry:
    config_hash: str
    failures: int
    fatal: str | None = None            # the FATAL reason, or None when not FATAL


class StateFile:
    """The entries in memory, mirrored to `path` (None: memory only, for tests and tools)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, Entry] = self._read() if path is not None else {}

    def get(self, model: str, config_hash: str) -> Entry | None:
        """The recorded entry, if it was recorded for this config."""
        e = self._entries.get(model)
        return e if e is not None and e.config_hash == config_hash else None

    def record(self, model: str, *, config_hash: str, failures: int, fatal: str | None) -> None:
        """Keep (or drop, when there is nothing to remember) the model's entry; write if it changed."""
        entry = Entry(config_hash, failures, fatal[:MAX_REASON_CHARS] if fatal else None)
        if failures <= 0 and fatal is None:
            if self._entries.pop(model, None) is not None:
                self._write()
            return
        if self._entries.get(model) != entry:
            self._entries[model] = entry
            self._write()

    def forget(self, model: str) -> None:
        if self._entries.pop(model, None) is not None:
            self._write()

    def _read(self) -> dict[str, Entry]:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()[: MAX_BYTES + 1]
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.warning("state file unreadable; starting with clean failure counts", path=str(self.path),
                        error=str(e))
            return {}
        try:
            if len(raw) > MAX_BYTES:
                raise ValueError(f"over {MAX_BYTES} bytes")
            data = json.loads(raw)
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
            out: dict[str, Entry] = {}
            for name, item in data["models"].items():
                fatal = item.get("fatal")
                entry = Entry(str(item["config_hash"]), int(item["failures"]), None if fatal is None else str(fatal))
                out[str(name)] = entry
            return out
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("state file invalid; starting with clean failure counts", path=str(self.path),
                        error=str(e))
            return {}

    def _write(self) -> None:
        if self.path is None:
            return
        data = {"version": VERSION, "models": {n: asdict(e) for n, e in sorted(self._entries.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            # The loop must go on: a full disk costs the memory of failures across a restart, nothing else.
            log.error("state file not written", path=str(self.path), error=str(e))
