"""A host process's log file: opened for its launch, rotated by size, read from its end.

The process appends (O_APPEND), so a log past its size is copy-truncated while it
writes (no hole of zeros at the old offset), and renamed before a launch. LOG_KEEP
old files are kept: log.1 (newest) .. log.3.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 3


def open_log(path: Path, max_bytes: int) -> int:
    """The fd a launch writes to (appending); a log past max_bytes is shifted away first."""
    if path.exists() and path.stat().st_size > max_bytes:
        shift(path)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def rotate_if_large(path: Path, max_bytes: int) -> None:
    """Copy-truncate a log past its size while its process writes (it appends: O_APPEND)."""
    try:
        if path.stat().st_size <= max_bytes:
            return
    except OSError:
        return
    shift(path, copy=True)


def tail(path: Path, lines: int) -> bytes:
    if lines <= 0 or not path.exists():
        return b""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block = min(size, max(8192, lines * 400))
        f.seek(size - block)
        data = f.read(block)
    return b"".join(data.splitlines(keepends=True)[-lines:])


def shift(path: Path, *, copy: bool = False) -> None:
    """log -> log.1 -> log.2 ...; copy=True keeps the file (a writer holds it) and truncates it."""
    for i in range(LOG_KEEP - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    if copy:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        os.truncate(path, 0)
    else:
        os.replace(path, path.with_name(f"{path.name}.1"))
