"""A host process's record, and the proof that a live pid is the process it records.

One record per "container" under <state dir>/processes/<instance>/records/<id>.json
holds what proves a process is ours: pid, start time (/proc/<pid>/stat field 22)
and the exact command line. `proof` says why a pid is not ours (reused, gone), so a
reused pid is never signalled nor adopted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass
class ProcessRecord:
    """Everything to relaunch the process and to prove a live pid is it (one JSON file)."""

    id: str
    model: str
    config_hash: str
    instance: str
    image_id: str                        # binary-sha256:<hex>
    binary: str
    binary_sha256: str
    argv: list[str]
    env: dict[str, str]
    uid: int | None
    gid: int | None
    rlimits: list[tuple[str, int, int]]
    memory_bytes: int | None
    pids_limit: int
    workdir: str
    log: str
    created_at: str
    status: str = "created"              # created | running | exited
    pid: int | None = None
    start_time: int | None = None        # clock ticks after boot, /proc/<pid>/stat field 22
    started_at: str = ""
    exit_code: int | None = None
    port: int = 0                        # where it listens (picked at create when the spec says 0)

    @classmethod
    def from_json(cls, d: dict[str, object]) -> ProcessRecord:
        d = dict(d)
        d["rlimits"] = [tuple(r) for r in d.get("rlimits") or []]  # type: ignore[attr-defined]
        return cls(**d)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ProcInfo:
    state: str            # R, S, D, T, t, Z, X ...
    start_time: int


def proc_info(pid: int) -> ProcInfo | None:
    """State and start time of a pid from /proc, None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()      # after "pid (comm) "; comm may hold spaces
    return ProcInfo(state=rest[0], start_time=int(rest[19]))


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def proof(rec: ProcessRecord) -> str | None:
    """None when the record's pid is the very process it launched; else why not (pid reuse, gone)."""
    if rec.pid is None or rec.start_time is None:
        return "never started"
    info = proc_info(rec.pid)
    if info is None:
        return "no such process"
    if info.state in ("Z", "X"):
        return "exited (zombie)"
    if info.start_time != rec.start_time:
        return f"pid {rec.pid} was reused (start time {info.start_time}, recorded {rec.start_time})"
    if proc_cmdline(rec.pid) != rec.argv:
        return f"pid {rec.pid} runs another command line"
    return None


def unreachable_by(path: Path, uid: int, gid: int, *, need: int) -> str | None:
    """Why `uid`/`gid` cannot open `path` for `need` (4 read, 1 execute), judged from the mode bits; None if it can."""
    def allowed(st: os.stat_result, bits: int) -> bool:
        if st.st_uid == uid:
            return bool(st.st_mode & (bits << 6))
        if st.st_gid == gid:
            return bool(st.st_mode & (bits << 3))
        return bool(st.st_mode & bits)

    try:
        for parent in reversed(path.parents):
            st = os.stat(parent)
            if not allowed(st, 1):
                return f"directory {parent} is {oct(st.st_mode & 0o777)}, owner {st.st_uid}"
        st = os.stat(path)
    except OSError as e:
        return str(e)
    if not allowed(st, need):
        return f"{path} is {oct(st.st_mode & 0o777)}, owner {st.st_uid}"
    return None


def exit_code(returncode: int) -> int:
    """Popen's -N for a signal as the engine reports it: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def now() -> str:
    return datetime.now(UTC).isoformat()
