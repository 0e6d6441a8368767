"""The process runtime's spare launchers (supervisor/runtime/process/launcher.py): an interpreter started
ahead of its launch, handed the launch over a socket, execs the binary through the descriptor it was given,
with the recorded argv, environment, working directory and rlimits; a spare that died is replaced."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.artifacts.lock import BinaryRecord, ImageLock, LockReader, write_lock
from supervisor.errors import RuntimeOperationError
from supervisor.runtime.cgroup import Cgroups
from supervisor.runtime.process.launcher import Spare, Spares, _handed, launch, read_until_exec
from supervisor.runtime.process.readiness import make_fifo
from supervisor.runtime.process.records import ProcessRecord, proof
from supervisor.runtime.process.runtime import ProcessRuntime

from .helpers import exited_process_record, until


def _hand(tmp_path: Path, spares: Spares | None, *, argv: list[str] | None = None,
          stdin: bytes = b"") -> tuple[Spare, str, Path, bytes]:
    """Hand a launch of /bin/sh to a launcher: its stderr goes to the log returned, its stdin is a new FIFO
    (`stdin` written to it first), its stdout a pipe, read to its end once the shell has exited."""
    out = tmp_path / "log"
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    bin_fd = os.open("/bin/sh", os.O_RDONLY | os.O_CLOEXEC)
    log_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    stdin_fd = make_fifo(tmp_path / "stdin.fifo")
    os.write(stdin_fd, stdin)
    state_r, state_w = os.pipe()
    r, w = os.pipe()
    payload = {"argv": argv or ["sh", "-c", 'echo "$GREETING $(pwd) $(ulimit -c) $$" >&2; read cmd; echo "got $cmd"'],
               "env": {"GREETING": "hi"}, "workdir": str(work), "uid": None, "gid": None,
               "rlimits": [("RLIMIT_CORE", 0, 0)], "cgroup_procs": None}
    try:
        spare = _handed(payload, [bin_fd, log_fd, w, stdin_fd, state_w], spares)
    finally:
        for fd in (bin_fd, log_fd, w, stdin_fd, state_w):
            os.close(fd)
    spare.sock.close()
    error = read_until_exec(r, 10)          # closes r
    with os.fdopen(state_r, "rb") as f:
        stdout = f.read() if not error else b""
    return spare, error, out, stdout


@pytest.fixture()
def spares() -> Iterator[Spares]:
    found = Spares(delay_s=0)
    yield found
    found.close()


def _waiting(spares: Spares) -> Spare:
    """The spare started ahead, once it waits."""
    spares.refill(now=True)
    assert until(lambda: spares._spare is not None, 10)
    assert spares._spare is not None
    return spares._spare


def _exit_code(spare: Spare) -> int:
    code = spare.child.wait(10)
    os.close(spare.pidfd)
    return code


def test_a_spare_execs_the_launch_it_is_handed(tmp_path: Path, spares: Spares) -> None:
    waiting = _waiting(spares)
    spare, error, out, stdout = _hand(tmp_path, spares, stdin=b"cmd_router_to_child:exit\n")
    assert error == "", error
    assert spare is waiting, "the launch went to the spare started ahead"
    assert _exit_code(spare) == 0
    assert out.read_text().split() == ["hi", str(tmp_path / "work"), "0", str(spare.child.pid)], "stderr: the log"
    assert stdout == b"got cmd_router_to_child:exit\n", "stdin: the FIFO; stdout: the state pipe"
    spares.refill()                                  # as launch() does, after delay_s (0 here)
    assert until(lambda: spares._spare is not None and spares._spare is not spare, 10), "the next spare"


def test_a_dead_spare_is_replaced_at_the_launch(tmp_path: Path, spares: Spares) -> None:
    dead = _waiting(spares)
    os.kill(dead.child.pid, signal.SIGKILL)
    dead.child.wait(10)
    spare, error, out, _ = _hand(tmp_path, spares, stdin=b"x\n")
    assert error == "" and spare is not dead
    assert _exit_code(spare) == 0
    assert out.read_text().split()[0] == "hi"


def test_an_exec_failure_comes_back_through_the_status_pipe(tmp_path: Path) -> None:
    spare, error, _, _ = _hand(tmp_path, None, argv=[""])        # an empty argv[0]: ValueError
    assert "ValueError" in error
    assert _exit_code(spare) == 127


def test_closing_discards_the_waiting_spare(spares: Spares) -> None:
    spare = _waiting(spares)
    t0 = time.monotonic()
    spares.close()
    assert spare.child.returncode == 0 and time.monotonic() - t0 < 5, "it exits on the EOF"
    spares.refill(now=True)
    time.sleep(0.2)
    assert spares._spare is None, "no spare after close"


def _recorded_sh(tmp_path: Path) -> tuple[ProcessRecord, Path]:
    """A record of a copy of /bin/sh (`sleep 30`) as its verified binary, and the real lock that records it."""
    binary = tmp_path / "llama-server"
    binary.write_bytes(Path("/bin/sh").read_bytes())
    binary.chmod(0o755)
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    record = BinaryRecord(variant="cpu-avx2", path=str(binary), sha256=digest, version="v", build_number=1,
                          flags=frozenset(), source_sha256="s" * 64, built_at="", origin="native")
    lock = tmp_path / "images.lock.json"
    write_lock(lock, ImageLock().with_binary(record))
    (tmp_path / "work").mkdir()
    argv = ["llama-server", "-c", "sleep 30"]
    rec = ProcessRecord(id="r", model="m", config_hash="h", instance="i", image_id=record.binary_id,
                        binary=str(binary), binary_sha256=digest, argv=argv, env={}, uid=None, gid=None,
                        rlimits=[("RLIMIT_CORE", 0, 0)], memory_bytes=None, pids_limit=64,
                        workdir=str(tmp_path / "work"), log=str(tmp_path / "m.log"), created_at="")
    return rec, lock


def test_a_launch_that_cannot_make_its_fifo_fails_clearly_and_leaves_no_descriptor_open(tmp_path: Path) -> None:
    rec, lock = _recorded_sh(tmp_path)
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeOperationError, match="launch m: .*No such file or directory"):
        launch(rec, lock=LockReader(lock), cgroups=Cgroups("i", root=tmp_path / "no-cgroup"), log_max_bytes=1 << 20,
               stdin_path=tmp_path / "missing" / "stdin.fifo")
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_launch_takes_the_spare_and_starts_the_next_one(tmp_path: Path, spares: Spares) -> None:
    """Through launch() itself: the verified binary (a copy of /bin/sh, recorded in a real lock) is executed
    by the spare started ahead, whose pid is then the record's, and the next spare follows."""
    rec, lock = _recorded_sh(tmp_path)
    waiting = _waiting(spares)
    launched = launch(rec, lock=LockReader(lock), cgroups=Cgroups("i", root=tmp_path / "no-cgroup"),
                      log_max_bytes=1 << 20, stdin_path=tmp_path / "stdin.fifo", spares=spares)
    try:
        assert launched.child is waiting.child, "the launch went to the spare started ahead"
        rec.pid, rec.start_time = launched.child.pid, launched.start_time
        assert proof(rec) is None, "the spare's pid is the launched process: same start time, the recorded argv"
        environ = Path(f"/proc/{launched.child.pid}/environ").read_bytes().split(b"\0")
        assert b"LLAMA_SERVER_ROUTER_PORT=0" in environ, "launched as the router's child: it says when it loaded"
        assert stat.S_ISFIFO(os.stat(tmp_path / "stdin.fifo").st_mode)
        assert until(lambda: spares._spare is not None and spares._spare is not waiting, 10), "the next spare"
    finally:
        launched.child.kill()
        launched.child.wait()
        os.close(launched.pidfd)
        os.close(launched.state_fd)


def _just_launched(rt: ProcessRuntime) -> Spare:
    """The runtime's spare taken as a launch takes it, and the next one due SPARE_DELAY_S (2 s) later."""
    spares = rt._spares
    assert until(lambda: spares._spare is not None, 10)
    taken = spares.take()
    spares.refill()
    time.sleep(0.3)
    assert spares._spare is None, "the next spare waits out its delay"
    return taken


def test_a_swap_has_its_launcher_started_beside_the_stop_not_on_its_start(tmp_path: Path) -> None:
    """A swap within SPARE_DELAY_S of the last launch found no spare and started its own on its path: 21-25 ms
    of its start on the Intel host (issue 17). The stop that makes the swap's room starts it at once."""
    exited_process_record(tmp_path, tmp_path / "m.log")
    rt = ProcessRuntime(state_dir=tmp_path, lock_path=tmp_path / "lock.json",
                        cgroups=Cgroups("i", root=tmp_path / "no-cgroup"))
    taken = _just_launched(rt)
    try:
        rt.prepare("p1")
        time.sleep(0.3)
        assert rt._spares._spare is None, "prepare starts nothing: the stop does"
        rt.stop("p1", timeout_s=1)      # not running: nothing is signalled
        assert until(lambda: rt._spares._spare is not None, 1.0), "started at once, not after the 2 s delay"
    finally:
        taken.discard()
        rt.close()
