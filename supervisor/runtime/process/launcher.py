"""Launch a recorded process: a tiny Python launcher execs the verified binary.

No preexec_fn in a threaded daemon: the launcher joins the cgroup, sets rlimits,
drops to the unprivileged uid, enters a private working directory and execs the
binary through the very file descriptor the runtime hashed, so the SHA-256 checked
is the one executed. A pipe closed on exec tells the runtime the exec happened (or
carries the launcher's error).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from supervisor.artifacts.hashing import CHUNK, HashCache
from supervisor.artifacts.lock import LockReader
from supervisor.errors import ImageMismatch, RuntimeOperationError
from supervisor.runtime.cgroup import Cgroups
from supervisor.runtime.process.logfiles import open_log
from supervisor.runtime.process.records import ProcessRecord, proc_info

EXEC_WAIT_S = 30.0

_LAUNCHER = r"""
import json, os, resource, sys
p = json.loads(sys.argv[1])
w = p["status_fd"]
try:
    os.set_inheritable(w, False)
    if p["cgroup_procs"]:
        with open(p["cgroup_procs"], "w") as f:
            f.write(str(os.getpid()))
    for name, soft, hard in p["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if p["uid"] is not None:
        os.setgroups([])
        os.setgid(p["gid"])
        os.setuid(p["uid"])
    os.chdir(p["workdir"])
    os.umask(0o077)
    os.execve(p["binary_fd"], p["argv"], p["env"])
except BaseException as e:
    os.write(w, ("%s: %s" % (type(e).__name__, e)).encode())
    os._exit(127)
"""



@dataclass(frozen=True)
class Launched:
    child: subprocess.Popen[bytes]
    pidfd: int              # opened on our unreaped child: its pid cannot be reused yet
    start_time: int


def launch(rec: ProcessRecord, *, lock: LockReader, cgroups: Cgroups, log_max_bytes: int,
           hashes: HashCache | None = None) -> Launched:
    """Check the binary against the lock and its hash, start the launcher, wait for its exec.

    The hash is of the descriptor that is executed; with `hashes` it is read again only when that
    descriptor's file identity (device, inode, size, mtime, ctime) is not the one hashed before."""
    from supervisor.artifacts import binaries

    lock_path = lock.path
    locked = binaries.binary_for(lock.read(), rec.image_id)
    if locked is None or (locked.path, locked.sha256) != (rec.binary, rec.binary_sha256):
        raise ImageMismatch(f"{rec.model}: binary {rec.binary} ({rec.image_id[:27]}) is not the one "
                            f"{lock_path} records: refusing to launch")
    bin_fd = os.open(rec.binary, os.O_RDONLY | os.O_CLOEXEC)
    try:
        actual = hashes.sha256_fd(bin_fd) if hashes is not None else sha256_fd(bin_fd)
        if actual != rec.binary_sha256:
            raise ImageMismatch(
                f"llama-server binary {rec.binary} has SHA-256 {actual}, the lock has {rec.binary_sha256}: "
                f"refusing to launch {rec.model}; rebuild with 'llama-supervisorctl build --native'"
            )
        procs = cgroups.prepare(rec.id, memory_bytes=rec.memory_bytes, pids_limit=rec.pids_limit)
        log_fd = open_log(Path(rec.log), log_max_bytes)
        r, w = os.pipe()
        payload = {"status_fd": w, "binary_fd": bin_fd, "argv": rec.argv, "env": rec.env,
                   "workdir": rec.workdir, "uid": rec.uid, "gid": rec.gid,
                   "rlimits": rec.rlimits, "cgroup_procs": str(procs) if procs else None}
        try:
            child = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(payload)],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=(bin_fd, w),
                start_new_session=True, env={}, cwd="/",
            )
        except OSError as e:
            os.close(r)
            raise RuntimeOperationError(f"launch {rec.model}: {e}") from e
        finally:
            os.close(w)
            os.close(log_fd)
    finally:
        os.close(bin_fd)
    pidfd = os.pidfd_open(child.pid)       # our unreaped child: its pid cannot be reused yet
    info = proc_info(child.pid)
    error = read_until_exec(r, EXEC_WAIT_S)
    if error or info is None:
        os.close(pidfd)
        child.kill()
        child.wait()
        raise RuntimeOperationError(f"launch {rec.model}: {error or 'the launcher vanished'}")
    return Launched(child=child, pidfd=pidfd, start_time=info.start_time)


def sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, CHUNK, offset):
        h.update(block)
        offset += len(block)
    return h.hexdigest()


def read_until_exec(fd: int, timeout_s: float) -> str:
    """The launcher's error message, or "" once its exec closed the pipe."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "the launcher did not exec llama-server in time"
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            block = os.read(fd, 4096)
            if not block:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(block)
    finally:
        os.close(fd)
