"""The loop's command runner on its own: slots and a time in; transitions, answers and reloads out."""

from __future__ import annotations

import random
from concurrent.futures import Future

from supervisor.core.commands import CommandResult, ModelResult, Reread, Shutdown, StartModels, StopModels
from supervisor.core.lifecycle import Lifecycle, State
from supervisor.core.planner import Diff
from supervisor.daemon.commands import Commands
from supervisor.daemon.state import Slot

from .helpers import desired


def slots(*names: str) -> dict[str, Slot]:
    out = {}
    for n in names:
        d = desired(n)
        out[n] = Slot(d, Lifecycle(n, health=d.health, restart=d.restart, rng=random.Random(1), enabled=False))
    return out


def no_reload(apply: bool, origin: str) -> tuple[Diff | None, list[str]]:
    raise AssertionError("not a reload")


def no_shutdown(stop_models: bool) -> None:
    raise AssertionError("not a shutdown")


def test_a_waiting_start_is_answered_when_its_model_runs_or_times_out() -> None:
    s = slots("a", "b")
    c = Commands(command_timeout_s=30.0)
    fut: Future[CommandResult] = Future()
    assert c.handle(StartModels(("a", "nope")), fut, slots=s, now=100.0, reload=no_reload,
                    shutdown=no_shutdown) == []          # STOPPED -> enabled: the planner starts it
    assert s["a"].lc.enabled and not s["b"].lc.enabled
    assert c.deadlines() == [130.0]
    c.check_waiters(s, 129.0)
    assert not fut.done()
    c.check_waiters(s, 130.0)
    assert fut.result(0) == CommandResult(ok=False, results=(ModelResult("a", False, "timed out waiting"),),
                                          unknown=("nope",))
    assert c.deadlines() == []


def test_a_stop_of_stopped_models_is_answered_at_the_next_check() -> None:
    s = slots("a")
    c = Commands(command_timeout_s=30.0)
    fut: Future[CommandResult] = Future()
    c.handle(StopModels(("all",)), fut, slots=s, now=0.0, reload=no_reload, shutdown=no_shutdown)
    c.check_waiters(s, 0.0)
    assert fut.result(0) == CommandResult(ok=True, results=(ModelResult("a", True, "stopped"),))
    assert s["a"].lc.state is State.STOPPED


def test_reread_and_shutdown_go_through_the_loops_callbacks() -> None:
    c = Commands(command_timeout_s=30.0)
    asked: list[tuple[bool, str]] = []

    def reload(apply: bool, origin: str) -> tuple[Diff | None, list[str]]:
        asked.append((apply, origin))
        return None, ["m.yaml:3: bad"]

    fut: Future[CommandResult] = Future()
    c.handle(Reread(), fut, slots={}, now=0.0, reload=reload, shutdown=no_shutdown)
    assert asked == [(False, "reread")] and fut.result(0) == CommandResult(ok=False, error="m.yaml:3: bad")
    stops: list[bool] = []
    done: Future[CommandResult] = Future()
    c.handle(Shutdown(stop_models=True), done, slots={}, now=0.0, reload=no_reload, shutdown=stops.append)
    assert stops == [True] and done.result(0).ok
