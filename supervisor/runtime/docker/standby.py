"""Standby containers: a stopped model's container started ahead of its next request, held before
llama-server's exec by the image's `llama-gate` (images/gate.c), released through a FIFO.

Why. `docker start` of a stopped model container to /health 200 took 1.72 s on the 2-core test host,
against 1.18 s for the same binary and flags started as a bare host process (8 interleaved rounds).
The difference is the engine's: namespaces, the network and its published port, mounts, the cgroup.
A container released from the gate took 1.34 s: the engine's part is done before the request.

How.
- Each container is created with `llama-gate FIFO llama-server ARGV`; the FIFO is a file of the daemon's
  state directory (`standby/<container name>`), bind-mounted read-only. The gate blocks opening it.
- On-demand models' containers are created so (`held`); always-on ones are plain. After the daemon stops
  such a model (`stop`), the runtime starts its container again once `ARM_DELAY_S` has passed (a swap's
  new model is loading then: the engine's work would take its CPU): that is arming. At most
  `--standby-max` are armed at once; past it the one armed longest ago is stopped again.
  The container is running to the engine and held at the gate; to the daemon it is `exited` (0).
- `start` of an armed container is a release: open the FIFO for writing (it has a reader: the gate) and
  write `g`; the gate execs llama-server with the container's own argv. A container that is not armed is
  started by the engine, then released as soon as its gate waits (an open with no reader fails: ENXIO).
- After a daemon restart a running container whose FIFO has a reader is an armed one.
- Removing or killing the container ends the gate; SIGTERM ends it at once (it handles the signal).

What it costs: per armed model, a gate process (static, a few hundred KiB), the engine's shim and the
port's proxy, and `docker ps` shows the container Up. On by default (`--no-standby` turns it off,
`--standby-max` bounds it); docs/DESIGN.md weighs it.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger("supervisor.runtime.standby")

GATE = "/usr/local/bin/llama-gate"
SERVER = "/usr/local/bin/llama-server"
FIFO_TARGET = "/run/llama-supervisor/gate"
ARM_DELAY_S = 2.0          # after a stop: about one model load, so arming does not take a loading model's CPU
GATE_WAIT_S = 5.0          # after an engine start: how long the release waits for the gate to open its FIFO
GATE_POLL_S = 0.001        # the FIFO open that finds the gate: a syscall, no engine call
ALIVE_EVERY_S = 0.1        # meanwhile, how often the engine is asked whether the container still runs
RELEASE = b"g"


class Gates:
    """The FIFOs of one daemon instance's containers, by container name, under `root`."""

    def __init__(self, root: Path, *, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.owner = owner          # the server's uid, gid (a root daemon gives it the FIFO); None: mode 0604

    def path(self, name: str) -> Path:
        return self.root / name

    def make(self, name: str, user: str) -> Path:
        """A fresh FIFO for a container about to be created (a stale one of a removed container goes)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        p = self.path(name)
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        os.mkfifo(p, 0o600)
        owner = self.owner or _owner_of(user)
        if owner is not None and os.geteuid() == 0:
            os.chown(p, *owner)
            os.chmod(p, 0o400)              # the server's uid reads; root writes past it
        else:
            os.chmod(p, 0o604)              # the server's uid reads as "other"; only the daemon writes
        return p

    def drop(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            pass

    def waiting(self, name: str, *, wait_s: float = 0.0, alive: Callable[[], bool] = lambda: True) -> bool:
        """Whether the container's gate is blocked on its FIFO (an armed container); with `wait_s`, wait that
        long for it (arming). Opening and closing the FIFO hands the gate an EOF, after which it waits again."""
        fd = self._gate(name, wait_s, alive)
        if fd is None:
            return False
        os.close(fd)
        return True

    def release(self, name: str, *, wait_s: float = 0.0, alive: Callable[[], bool] = lambda: True) -> bool:
        """Let the gate exec llama-server; with `wait_s`, first wait that long for the gate to open its FIFO
        (a container just started by the engine), as long as `alive()`. False: no gate was waiting."""
        fd = self._gate(name, wait_s, alive)
        if fd is None:
            return False
        try:
            os.write(fd, RELEASE)
        finally:
            os.close(fd)
        return True

    def _gate(self, name: str, wait_s: float, alive: Callable[[], bool]) -> int | None:
        """The FIFO opened for writing once its gate waits on it, for up to `wait_s` while `alive()`; None if not."""
        now = time.monotonic()
        deadline, check_at = now + wait_s, now + ALIVE_EVERY_S
        while True:
            fd = self._open(name)
            if fd is not None:
                return fd
            now = time.monotonic()
            if now >= deadline:
                return None
            if now >= check_at:             # an engine call: not at every 1 ms poll
                if not alive():
                    return None
                check_at = now + ALIVE_EVERY_S
            time.sleep(GATE_POLL_S)

    def _open(self, name: str) -> int | None:
        try:
            return os.open(self.path(name), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):      # no reader (not waiting), or no FIFO
                return None
            raise


def _owner_of(user: str) -> tuple[int, int] | None:
    """A numeric `uid:gid` container user (the image's 65532:65532); None for a name."""
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (gid or uid).isdigit():
        return int(uid), int(gid or uid)
    return None


def entrypoint() -> list[str]:
    return [GATE, FIFO_TARGET, SERVER]


class Arming:
    """Timers that arm stopped containers after ARM_DELAY_S; one per container, cancelled by any other call
    on it. `arm` runs on the timer's thread; the runtime serialises it with its own calls (`lock(cid)`)."""

    def __init__(self, arm: Callable[[str], None], *, delay_s: float = ARM_DELAY_S) -> None:
        self._arm = arm
        self.delay_s = delay_s
        self._timers: dict[str, threading.Timer] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._closed = False

    def lock(self, container_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(container_id, threading.Lock())

    def schedule(self, container_id: str, *, delay_s: float | None = None,
                 then: Callable[[str], None] | None = None) -> None:
        """Run `then` (the arm, by default) on the container `delay_s` from now (ARM_DELAY_S by default),
        in place of any timer pending for it."""
        with self._guard:
            if self._closed:
                return
            old = self._timers.pop(container_id, None)
            if old is not None:
                old.cancel()
            t = threading.Timer(self.delay_s if delay_s is None else delay_s, self._fire,
                                (container_id, then or self._arm))
            t.daemon = True
            t.name = f"arm-{container_id[:12]}"
            self._timers[container_id] = t
            t.start()

    def cancel(self, container_id: str) -> None:
        with self._guard:
            t = self._timers.pop(container_id, None)
        if t is not None:
            t.cancel()

    def forget(self, container_id: str) -> None:
        self.cancel(container_id)
        with self._guard:
            self._locks.pop(container_id, None)

    def close(self) -> None:
        with self._guard:
            self._closed = True
            timers, self._timers = list(self._timers.values()), {}
        for t in timers:
            t.cancel()

    def _fire(self, container_id: str, then: Callable[[str], None]) -> None:
        with self._guard:
            if self._timers.get(container_id) is not threading.current_thread():
                return                      # cancelled or re-scheduled meanwhile
            del self._timers[container_id]
        try:
            then(container_id)
        except Exception as e:  # noqa: BLE001 - a failed arm costs only the head start; the next start is a plain one
            log.warning("standby: arming failed", container=container_id[:12], error=str(e))
