"""SHA-256 of files and streams, in one place."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_chunks(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for block in chunks:
        h.update(block)
    return h.hexdigest()


def is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


FileIdentity = tuple[int, int, int, int, int]


def identity(st: os.stat_result) -> FileIdentity:
    """What changes whenever a file's bytes can have changed: (device, inode, size, mtime_ns, ctime_ns).

    A write changes mtime and ctime, a replacement or rename-over changes the inode, and ctime cannot be
    set back from user space (utime sets it to now), so a cache keyed by it re-hashes after any change.
    """
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HashCache:
    """SHA-256 of files, kept while their identity is unchanged (git's index does the same).

    The identity is taken with fstat on the very descriptor that is hashed (and, for a launch, executed),
    so what is looked up is what is used. Bounded: the oldest entry goes past `limit`.
    """

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._known: dict[FileIdentity, str] = {}
        self.hashed = 0                      # how many times a file was actually read (tests, benchmarks)

    def sha256_fd(self, fd: int) -> str:
        key = identity(os.fstat(fd))
        known = self._known.get(key)
        if known is not None:
            return known
        h = hashlib.sha256()
        offset = 0
        while block := os.pread(fd, CHUNK, offset):
            h.update(block)
            offset += len(block)
        self.hashed += 1
        digest = h.hexdigest()
        if identity(os.fstat(fd)) == key:    # unchanged while it was read: worth keeping
            self._known[key] = digest
            while len(self._known) > self._limit:
                del self._known[next(iter(self._known))]
        return digest

    def sha256_path(self, path: Path) -> str:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self.sha256_fd(fd)
        finally:
            os.close(fd)
