"""FATAL and failure counts survive a daemon restart (statefile.py), and only for the same config."""

from __future__ import annotations

import json
import queue
import random
from concurrent.futures import Future
from pathlib import Path

from structlog.testing import capture_logs

from supervisor.control.api import CommandResult, StartModels
from supervisor.core.events import ContainerAction, ContainerEvent, ControlRequest, Event, ManifestsChanged
from supervisor.core.lifecycle import State
from supervisor.core.spec import DesiredModel, RestartSettings
from supervisor.daemon.loop import Supervisor
from supervisor.daemon.statefile import Entry, StateFile

from .fakes import FakeClock, FakeProber, FakeRuntime, FakeVerifier
from .helpers import desired


def test_entries_round_trip_atomically_and_only_for_the_same_hash(tmp_path: Path) -> None:
    p = tmp_path / "state" / "models.default.state.json"
    s = StateFile(p)
    s.record("a", config_hash="h1", failures=2, fatal=None)
    s.record("b", config_hash="h2", failures=5, fatal="exited with code 1 (5 consecutive failures)")
    assert sorted(x.name for x in p.parent.iterdir()) == [p.name]          # no temporary file left
    again = StateFile(p)
    assert again.get("a", "h1") == Entry("h1", 2, None)
    assert again.get("b", "h2") == Entry("h2", 5, "exited with code 1 (5 consecutive failures)")
    assert again.get("b", "other-hash") is None                            # a manifest change forgets it
    again.record("b", config_hash="h2", failures=0, fatal=None)            # an explicit start resets it
    assert StateFile(p).get("b", "h2") is None and StateFile(p).get("a", "h1") is not None


def test_an_unchanged_entry_is_not_written_again(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    s = StateFile(p)
    s.record("a", config_hash="h", failures=1, fatal=None)
    before = p.stat().st_mtime_ns, p.stat().st_ino
    s.record("a", config_hash="h", failures=1, fatal=None)
    assert (p.stat().st_mtime_ns, p.stat().st_ino) == before


def test_a_corrupt_or_foreign_file_is_ignored_with_a_warning(tmp_path: Path) -> None:
    for text in ("{not json", json.dumps({"version": 99, "models": {}}), json.dumps([1, 2]),
                 json.dumps({"version": 1, "models": {"a": {"failures": "x"}}})):
        p = tmp_path / "s.json"
        p.write_text(text)
        with capture_logs() as logs:
            s = StateFile(p)
        assert s.get("a", "h") is None
        assert [e["event"] for e in logs] == ["state file invalid; starting with clean failure counts"]


def daemon(model: DesiredModel, state: StateFile, runtime: FakeRuntime) -> tuple[Supervisor, dict[str, DesiredModel]]:
    models = {model.name: model}
    q: queue.Queue[Event] = queue.Queue()
    sup = Supervisor(events=q, runtime=runtime, verifier=FakeVerifier(), load_desired=lambda: dict(models),
                     prober=FakeProber(), clock=FakeClock(), rng=random.Random(1), state=state)
    sup._reload(apply=True, origin="start")
    return sup, models


def crash_to_fatal(sup: Supervisor, rt: FakeRuntime) -> None:
    for _ in range(3):
        sup.iteration(block=False)
        slot = sup.slots["a"]
        if slot.lc.state is State.FATAL:
            return
        cid = slot.container_id
        assert cid is not None
        rt.crash(cid, 1)
        sup.post(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=1))
        sup.iteration(block=False)
        sup.clock.advance(10)  # type: ignore[attr-defined]  # past the backoff
    sup.iteration(block=False)


def test_a_fatal_model_stays_fatal_for_the_next_daemon_until_started(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    rt = FakeRuntime()
    m = desired("a", restart=RestartSettings(max_failures=2))
    first, _ = daemon(m, StateFile(path), rt)
    crash_to_fatal(first, rt)
    assert first.slots["a"].lc.state is State.FATAL
    reason = first.slots["a"].lc.reason

    rt.calls.clear()                                   # the daemon is killed; a new one starts
    second, _ = daemon(m, StateFile(path), rt)
    for _ in range(3):
        second.clock.advance(60)                       # type: ignore[attr-defined]
        second.iteration(block=False)
    lc = second.slots["a"].lc
    assert lc.state is State.FATAL and lc.reason == reason and lc.consecutive_failures == 2
    assert "create" not in rt.ops() and "start" not in rt.ops()

    fut: Future[CommandResult] = Future()
    second.post(ControlRequest(StartModels(("a",), wait=False), fut))
    second.iteration(block=False)
    assert second.slots["a"].lc.state is State.STARTING
    assert StateFile(path).get("a", m.spec.config_hash()) is None          # the start cleared it


def test_a_manifest_change_clears_a_recorded_fatal(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    rt = FakeRuntime()
    m = desired("a", restart=RestartSettings(max_failures=2))
    first, _ = daemon(m, StateFile(path), rt)
    crash_to_fatal(first, rt)
    changed = desired("a", ctx=1024, restart=RestartSettings(max_failures=2))
    second, _ = daemon(changed, StateFile(path), rt)
    second.iteration(block=False)
    assert second.slots["a"].lc.state is State.STARTING                   # a new config is tried at once

    # and within one daemon: FATAL, then the manifest changes
    path2 = tmp_path / "s2.json"
    third, models = daemon(m, StateFile(path2), rt)
    crash_to_fatal(third, rt)
    assert third.slots["a"].lc.state is State.FATAL and StateFile(path2).get("a", m.spec.config_hash())
    models["a"] = changed
    third.post(ManifestsChanged())
    third.iteration(block=False)
    assert third.slots["a"].lc.state is State.STARTING
    assert StateFile(path2).get("a", m.spec.config_hash()) is None


def test_failure_counts_carry_over_so_restarts_do_not_reset_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    rt = FakeRuntime()
    m = desired("a", restart=RestartSettings(max_failures=3))
    first, _ = daemon(m, StateFile(path), rt)
    first.iteration(block=False)
    cid = first.slots["a"].container_id
    assert cid is not None
    rt.crash(cid, 1)
    first.post(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=1))
    first.iteration(block=False)
    assert first.slots["a"].lc.state is State.BACKOFF
    second, _ = daemon(m, StateFile(path), rt)
    assert second.slots["a"].lc.consecutive_failures == 1
