"""Launch a recorded process: a tiny Python launcher execs the verified binary.

No preexec_fn in a threaded daemon: the launcher joins the cgroup, sets rlimits,
drops to the unprivileged uid, enters a private working directory and execs the
binary through the very file descriptor the runtime hashed, so the SHA-256 checked
is the one executed. A pipe closed on exec tells the runtime the exec happened (or
carries the launcher's error).

The launcher's interpreter is started ahead of its launch (a spare, `Spares`): it
waits on a socket for the launch (the recorded parameters, and the descriptors of
the binary, the log, the exec-status pipe, and the server's stdin FIFO and stdout
pipe: readiness.py) and does nothing else until then. Its
start-up, about 30 ms of a 2-core host's CPU, is then off every start's path: a cold
start, a swap and a crash restart pay one message. Each launch has the next spare
started SPARE_DELAY_S later, off the CPU of the model it launched; a stop has it started
at once, beside the stop that the next launch (a swap's) waits for.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from supervisor.artifacts.hashing import CHUNK, HashCache
from supervisor.artifacts.lock import LockReader
from supervisor.errors import ImageMismatch, RuntimeOperationError
from supervisor.runtime.cgroup import Cgroups
from supervisor.runtime.process.logfiles import open_log
from supervisor.runtime.process.readiness import CHILD_ENV, make_fifo
from supervisor.runtime.process.records import ProcessRecord, proc_info

EXEC_WAIT_S = 30.0
SPARE_DELAY_S = 2.0     # after a launch, before the next spare starts: about one load, whose CPU it would take

log = structlog.get_logger("supervisor.runtime.process")

_LAUNCHER = r"""
import json, os, resource, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
try:
    msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 5)
except OSError:
    os._exit(0)
if not msg or len(fds) != 5:
    os._exit(0)                         # the daemon closed its end: no launch
sock.close()
p = json.loads(msg)
binary_fd, log_fd, w, stdin_fd, state_fd = fds
try:
    os.set_inheritable(w, False)
    os.dup2(stdin_fd, 0)
    os.dup2(state_fd, 1)
    os.dup2(log_fd, 2)
    for fd in (stdin_fd, state_fd, log_fd):
        os.close(fd)
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
    os.execve(binary_fd, p["argv"], p["env"])
except BaseException as e:
    os.write(w, ("%s: %s" % (type(e).__name__, e)).encode())
    os._exit(127)
"""


class Spare:
    """A launcher interpreter started ahead of its launch, waiting on its end of a socket pair."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.child: subprocess.Popen[bytes] = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), start_new_session=True, env={}, cwd="/",
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.pidfd = os.pidfd_open(self.child.pid)     # our unreaped child: its pid cannot be reused yet

    def send(self, payload: Mapping[str, object], fds: list[int]) -> bool:
        """Hand it the launch; False if it is gone (the caller starts another)."""
        if self.child.poll() is not None:
            return False
        try:
            socket.send_fds(self.sock, [json.dumps(payload).encode()], fds)
        except OSError:
            return False
        return True

    def discard(self) -> None:
        """Close our end (it exits on the EOF) and reap it."""
        self.sock.close()
        os.close(self.pidfd)
        try:
            self.child.wait(5)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()


class Spares:
    """At most one spare launcher, taken by a launch and replaced SPARE_DELAY_S later (or at once, `now`)
    on a timer thread; a launch that finds none starts its own, as if there were no spares."""

    def __init__(self, *, delay_s: float = SPARE_DELAY_S) -> None:
        self.delay_s = delay_s
        self._spare: Spare | None = None
        self._guard = threading.Lock()
        self._closed = False
        self._timer: threading.Timer | None = None

    def take(self) -> Spare:
        """The waiting spare, else a new one (a spare that died meanwhile fails its `send`: `_handed`)."""
        with self._guard:
            spare, self._spare = self._spare, None
        return spare if spare is not None else Spare()

    def refill(self, *, now: bool = False) -> None:
        """Start the next spare on a thread: its interpreter's start-up is off the launch's path, and after
        `delay_s` (unless `now`) off the CPU of the model just launched, which is loading."""
        with self._guard:
            if self._closed:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(0 if now else self.delay_s, self._refill)
            self._timer.name, self._timer.daemon = "launcher-spare", True
            self._timer.start()

    def _refill(self) -> None:
        with self._guard:
            if self._closed or self._spare is not None:
                return
        try:
            spare = Spare()
        except OSError as e:
            log.warning("could not start a spare launcher; the next launch starts its own", error=str(e))
            return
        with self._guard:
            kept = not self._closed and self._spare is None
            if kept:
                self._spare = spare
        if not kept:
            spare.discard()

    def close(self) -> None:
        with self._guard:
            self._closed = True
            spare, self._spare = self._spare, None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if spare is not None:
            spare.discard()


@dataclass(frozen=True)
class Launched:
    child: subprocess.Popen[bytes]
    pidfd: int              # opened on our unreaped child: its pid cannot be reused yet
    start_time: int
    state_fd: int           # the read end of its stdout: state lines (readiness.py)


def launch(rec: ProcessRecord, *, lock: LockReader, cgroups: Cgroups, log_max_bytes: int, stdin_path: Path,
           hashes: HashCache | None = None, spares: Spares | None = None) -> Launched:
    """Check the binary against the lock and its hash, hand the launch to a launcher, wait for its exec.

    The server runs as the router's child (readiness.py): its stdin is a new FIFO at `stdin_path`, its
    stdout the pipe whose read end is returned (`state_fd`), its stderr the log.

    The hash is of the descriptor that is executed; with `hashes` it is read again only when that
    descriptor's file identity (device, inode, size, mtime, ctime) is not the one hashed before.
    With `spares` the launcher is one started ahead, and the next one is started beside this launch."""
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
        payload = {"argv": rec.argv, "env": {**rec.env, CHILD_ENV: "0"}, "workdir": rec.workdir, "uid": rec.uid,
                   "gid": rec.gid, "rlimits": rec.rlimits, "cgroup_procs": str(procs) if procs else None}
        given: list[int] = []            # the launcher's (ours closed once handed over, or on a failure)
        kept: list[int] = []             # the ends we read: closed only if the launch fails
        try:
            given.append(log_fd := open_log(Path(rec.log), log_max_bytes))
            given.append(stdin_fd := make_fifo(stdin_path))
            state_r, state_w = os.pipe()
            kept.append(state_r)
            given.append(state_w)
            r, w = os.pipe()
            kept.append(r)
            given.append(w)
            spare = _handed(payload, [bin_fd, log_fd, w, stdin_fd, state_w], spares)
        except OSError as e:
            for fd in kept:
                os.close(fd)
            raise RuntimeOperationError(f"launch {rec.model}: {e}") from e
        finally:
            for fd in given:
                os.close(fd)
    finally:
        os.close(bin_fd)
    if spares is not None:
        spares.refill()
    child, pidfd = spare.child, spare.pidfd
    spare.sock.close()
    info = proc_info(child.pid)
    error = read_until_exec(r, EXEC_WAIT_S)
    if error or info is None:
        os.close(pidfd)
        os.close(state_r)
        child.kill()
        child.wait()
        raise RuntimeOperationError(f"launch {rec.model}: {error or 'the launcher vanished'}")
    return Launched(child=child, pidfd=pidfd, start_time=info.start_time, state_fd=state_r)


def _handed(payload: Mapping[str, object], fds: list[int], spares: Spares | None) -> Spare:
    """The launcher that took the launch: the spare, or (if it is gone) one started now."""
    spare = spares.take() if spares is not None else Spare()
    if spare.send(payload, fds):
        return spare
    spare.discard()
    spare = Spare()
    if not spare.send(payload, fds):
        spare.discard()
        raise OSError("the launcher exited before it took the launch")
    return spare


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
