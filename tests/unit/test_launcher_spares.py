"""The process runtime's spare launchers (supervisor/runtime/process/launcher.py): an interpreter started
ahead of its launch, handed the launch over a socket, execs the binary through the descriptor it was given,
with the recorded argv, environment, working directory and rlimits; a spare that died is replaced."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from supervisor.runtime.process.launcher import Spare, Spares, _handed, read_until_exec

from .helpers import until


def _hand(tmp_path: Path, spares: Spares | None, *, argv: list[str] | None = None) -> tuple[Spare, str, Path]:
    out = tmp_path / "log"
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    bin_fd = os.open("/bin/sh", os.O_RDONLY | os.O_CLOEXEC)
    log_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    r, w = os.pipe()
    payload = {"argv": argv or ["sh", "-c", 'echo "$GREETING $(pwd) $(ulimit -c) $$"'], "env": {"GREETING": "hi"},
               "workdir": str(work), "uid": None, "gid": None, "rlimits": [("RLIMIT_CORE", 0, 0)],
               "cgroup_procs": None}
    try:
        spare = _handed(payload, [bin_fd, log_fd, w], spares)
    finally:
        for fd in (bin_fd, log_fd, w):
            os.close(fd)
    spare.sock.close()
    error = read_until_exec(r, 10)          # closes r
    return spare, error, out


def test_a_spare_execs_the_launch_it_is_handed(tmp_path: Path) -> None:
    spares = Spares(delay_s=0)
    try:
        spares.refill(now=True)
        assert until(lambda: spares._spare is not None, 10)
        waiting = spares._spare
        assert waiting is not None
        spare, error, out = _hand(tmp_path, spares)
        assert error == "", error
        assert spare is waiting, "the launch went to the spare started ahead"
        assert spare.child.wait(10) == 0
        os.close(spare.pidfd)
        assert out.read_text().split() == ["hi", str(tmp_path / "work"), "0", str(spare.child.pid)]
        spares.refill()                                  # as launch() does, after delay_s (0 here)
        assert until(lambda: spares._spare is not None and spares._spare is not spare, 10), "the next spare"
    finally:
        spares.close()


def test_a_dead_spare_is_replaced_at_the_launch(tmp_path: Path) -> None:
    spares = Spares(delay_s=60)
    try:
        spares.refill(now=True)
        assert until(lambda: spares._spare is not None, 10)
        dead = spares._spare
        assert dead is not None
        os.kill(dead.child.pid, signal.SIGKILL)
        dead.child.wait(10)
        spare, error, out = _hand(tmp_path, spares)
        assert error == "" and spare is not dead
        assert spare.child.wait(10) == 0
        os.close(spare.pidfd)
        assert out.read_text().split()[0] == "hi"
    finally:
        spares.close()


def test_an_exec_failure_comes_back_through_the_status_pipe(tmp_path: Path) -> None:
    spare, error, _ = _hand(tmp_path, None, argv=[""])        # an empty argv[0]: ValueError
    assert "ValueError" in error
    assert spare.child.wait(10) == 127
    os.close(spare.pidfd)


def test_closing_discards_the_waiting_spare() -> None:
    spares = Spares()
    spares.refill(now=True)
    assert until(lambda: spares._spare is not None, 10)
    spare = spares._spare
    assert spare is not None
    t0 = time.monotonic()
    spares.close()
    assert spare.child.returncode == 0 and time.monotonic() - t0 < 5, "it exits on the EOF"
    spares.refill(now=True)
    time.sleep(0.2)
    assert spares._spare is None, "no spare after close"
