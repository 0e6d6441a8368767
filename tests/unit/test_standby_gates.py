"""Standby's FIFO gate and arming timers (supervisor/runtime/docker/standby.py), with a real FIFO and a
reader thread that does what images/gate.c does: block opening the FIFO, exec (here: record) on 'g',
wait again on an EOF."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

from supervisor.runtime.docker.standby import Arming, Gates, _owner_of, entrypoint

from .helpers import until


def _is_fifo(p: Path) -> bool:
    try:
        return stat.S_ISFIFO(p.stat().st_mode)
    except OSError:
        return False


class Gate:
    """images/gate.c's loop on a thread: what it read, and whether it was released."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.eofs = 0
        self.released = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDONLY)
            data = os.read(fd, 1)
            os.close(fd)
            if data == b"g":
                self.released.set()
                return
            self.eofs += 1


def test_no_reader_means_not_waiting_and_no_release(tmp_path: Path) -> None:
    gates = Gates(tmp_path / "standby")
    gates.make("c1", "65532:65532")
    assert _is_fifo(gates.path("c1"))
    assert not gates.waiting("c1")
    t0 = time.monotonic()
    assert not gates.release("c1", wait_s=0.05)
    assert time.monotonic() - t0 >= 0.05
    assert not _is_fifo(gates.path("nope")) and not gates.release("nope")


def test_a_waiting_gate_is_seen_without_being_released_then_released(tmp_path: Path) -> None:
    gates = Gates(tmp_path / "standby")
    p = gates.make("c1", "65532:65532")
    gate = Gate(p)
    assert until(lambda: gates.waiting("c1"), 5)
    assert until(lambda: gate.eofs >= 1, 5)             # looking handed it an EOF: it waits again
    assert not gate.released.is_set()
    assert until(lambda: gates.release("c1"), 5)
    assert gate.released.wait(5)


def test_release_waits_for_a_gate_that_opens_later(tmp_path: Path) -> None:
    gates = Gates(tmp_path / "standby")
    p = gates.make("c1", "65532:65532")
    late: list[Gate] = []
    timer = threading.Timer(0.2, lambda: late.append(Gate(p)))
    timer.start()
    assert gates.release("c1", wait_s=5)
    assert until(lambda: late, 5) and late[0].released.wait(5)     # the gate's thread may run before the append


def test_release_gives_up_when_the_container_is_gone(tmp_path: Path) -> None:
    gates = Gates(tmp_path / "standby")
    gates.make("c1", "65532:65532")
    t0 = time.monotonic()
    assert not gates.release("c1", wait_s=5, alive=lambda: False)
    assert time.monotonic() - t0 < 1


def test_a_fresh_fifo_replaces_a_stale_one_and_drop_removes_it(tmp_path: Path) -> None:
    gates = Gates(tmp_path / "standby")
    stale = gates.path("c1")
    stale.parent.mkdir(parents=True)
    stale.write_text("not a fifo")
    gates.make("c1", "65532:65532")
    assert _is_fifo(gates.path("c1"))
    mode = stale.stat().st_mode & 0o777
    assert mode in (0o400, 0o604) and not mode & 0o022, "nobody but the daemon writes to it"
    gates.drop("c1")
    assert not stale.exists()
    gates.drop("c1")            # twice: no error


def test_the_container_user_and_entrypoint() -> None:
    assert _owner_of("65532:65532") == (65532, 65532)
    assert _owner_of("1000") == (1000, 1000)
    assert _owner_of("nonroot") is None
    assert entrypoint()[0].endswith("llama-gate") and entrypoint()[-1].endswith("llama-server")


def test_arming_fires_once_after_its_delay_and_a_new_call_cancels_it() -> None:
    fired: list[str] = []
    arming = Arming(fired.append, delay_s=0.05)
    arming.schedule("a")
    arming.schedule("b")
    arming.cancel("b")
    assert until(lambda: fired == ["a"], 5)
    time.sleep(0.1)
    assert fired == ["a"], "b was cancelled"
    arming.schedule("a")
    arming.schedule("a")        # re-scheduled: still once
    assert until(lambda: fired == ["a", "a"], 5)
    time.sleep(0.1)
    assert fired == ["a", "a"]
    arming.close()
    arming.schedule("c")        # closed: no more
    time.sleep(0.1)
    assert fired == ["a", "a"], "nothing fires once closed"


def test_a_failed_arm_is_logged_not_raised_and_the_next_one_still_fires() -> None:
    tried: list[str] = []

    def arm(cid: str) -> None:
        tried.append(cid)
        if cid == "a":
            raise RuntimeError("engine gone")

    arming = Arming(arm, delay_s=0.01)
    arming.schedule("a")
    assert until(lambda: tried == ["a"], 5)
    arming.schedule("b")
    assert until(lambda: tried == ["a", "b"], 5)
    arming.close()


def test_while_it_waits_for_the_gate_it_asks_the_engine_rarely(tmp_path: Path) -> None:
    """Each alive() is an engine call (inspect): once per ALIVE_EVERY_S, not once per 1 ms FIFO poll, or a
    crash restart's wait for its gate would hammer the engine while the model loads."""
    gates = Gates(tmp_path / "standby")
    gates.make("c1", "65532:65532")
    asked: list[float] = []

    def alive() -> bool:
        asked.append(time.monotonic())
        return True

    assert not gates.release("c1", wait_s=0.35, alive=alive)
    assert 1 <= len(asked) <= 4, f"{len(asked)} engine calls in 0.35 s"


def test_waiting_can_wait_for_a_gate_that_opens_later(tmp_path: Path) -> None:
    """Arming: the engine started the container; its gate opens the FIFO a moment later."""
    gates = Gates(tmp_path / "standby")
    p = gates.make("c1", "65532:65532")
    late: list[Gate] = []
    threading.Timer(0.2, lambda: late.append(Gate(p))).start()
    assert not gates.waiting("c1")
    assert gates.waiting("c1", wait_s=5)
    assert until(lambda: late, 5) and not late[0].released.is_set(), "looking is not releasing"
    assert until(lambda: gates.release("c1"), 5)
    assert late[0].released.wait(5)

