"""preload: true on an on-demand model, through the real loop on a fake clock: started at daemon start
when the budget allows, evicted like any on-demand model, started again once room frees and nothing
waits for it, never stopped for idleness, and left alone after an operator's stop."""

from __future__ import annotations

from concurrent.futures import Future

from supervisor.control.api import CommandResult, StopModels
from supervisor.core.events import ControlRequest
from supervisor.core.lifecycle import State
from supervisor.core.scheduler import Budget

from .test_ondemand_loop import G, Rig, od


def test_preload_models_start_with_the_daemon_as_far_as_the_budget_allows() -> None:
    r = Rig([od("warm", preload=True), od("also", preload=True), od("lazy")], Budget(memory_bytes=G + G // 2))
    assert r.state("also") is State.STARTING, "the first by name that fits"
    assert r.state("warm") is State.STOPPED and r.state("lazy") is State.STOPPED, "no room for it; lazy waits"
    r2 = Rig([od("warm", preload=True), od("lazy")], Budget())
    assert r2.state("warm") is State.STARTING and r2.state("lazy") is State.STOPPED


def test_a_big_model_evicts_the_preloaded_one_which_comes_back_when_it_leaves() -> None:
    r = Rig([od("warm", preload=True, ttl=5.0), od("big", mem=2 * G, ttl=30.0)], Budget(memory_bytes=2 * G))
    r.healthy("warm")
    r.clock.advance(100)
    r.step()
    assert r.state("warm") is State.RUNNING, "a preloaded model is not stopped for idleness"
    fut = r.ask("big")
    assert r.state("warm") is State.STOPPED and r.state("big") is State.STARTING, "still evictable"
    r.healthy("big")
    assert fut.result(0).ok
    r.step()
    assert r.state("warm") is State.STOPPED, "no room while big runs"
    r.clock.advance(30)
    r.step()                                  # big's idle TTL: it stops, and the room goes back to warm
    assert r.state("big") is State.STOPPED and r.state("warm") is State.STARTING
    r.healthy("warm")
    assert r.state("warm") is State.RUNNING


def test_a_preload_model_waits_while_another_model_waits_for_room() -> None:
    r = Rig([od("a"), od("warm", preload=True), od("big", mem=2 * G)], Budget(memory_bytes=2 * G))
    r.healthy("warm")
    r.ask("a")
    r.healthy("a")
    assert r.demand.enter("a")                # a is busy
    r.ask("big")                              # needs both: a is busy, so nothing is evicted before the swap wait
    assert r.state("warm") is State.RUNNING and r.state("a") is State.RUNNING and r.state("big") is State.STOPPED
    r.clock.advance(10.01)
    r.step()                                  # big waited its max_swap_wait: idle warm goes, busy a is held
    assert r.state("warm") is State.STOPPED and r.state("a") is State.RUNNING and not r.demand.enter("a")
    r.clock.advance(1)
    r.step()
    assert r.state("warm") is State.STOPPED, "room for warm, but big waits for room: warm does not take it"
    r.demand.leave("a")
    r.step()
    assert r.state("big") is State.STARTING and r.state("warm") is State.STOPPED


def test_an_operator_stop_keeps_a_preload_model_stopped() -> None:
    r = Rig([od("warm", preload=True)], Budget())
    r.healthy("warm")
    done: Future[CommandResult] = Future()
    r.step(ControlRequest(StopModels(("warm",)), done))
    assert done.result(0).ok and r.state("warm") is State.STOPPED
    r.clock.advance(60)
    r.step()
    assert r.state("warm") is State.STOPPED
    fut = r.ask("warm")                       # a request still starts it, as any on-demand model
    assert r.state("warm") is State.STARTING and not fut.done()
