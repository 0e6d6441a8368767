"""Mutants of daemon/ondemand.py that survived `make mutate` (docs/TESTING.md): what the operator
sees of on-demand starts, evictions and idle stops (log events, the eviction metric), the answers at
shutdown and for unknown names, several models waiting in one pass, the `contended` flag that makes
the last request out wake the loop, the undrain rules, and when the loop wakes for an idle TTL."""

from __future__ import annotations

import signal
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from structlog.testing import capture_logs

from supervisor.control.api import CommandResult, NullMetrics, StopModels
from supervisor.core.commands import Readiness
from supervisor.core.events import ControlRequest, EnsureRunning, ManifestsChanged, SignalReceived
from supervisor.core.lifecycle import State
from supervisor.core.scheduler import Budget
from supervisor.core.spec import LoadPolicy

from .test_ondemand_loop import FIFO, G, Rig, od


class Evictions(NullMetrics):
    """The metrics sink, recording evictions only."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def eviction(self, model: str, reason: str) -> None:
        self.seen.append((model, reason))


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def transitions(logs: list[dict[str, Any]], model: str) -> list[str]:
    return [e["reason"] for e in logs if e["event"] == "transition" and e.get("model") == model]


def test_an_on_demand_start_is_logged_with_its_model_and_memory() -> None:
    r = Rig([od("a")])
    r.clock.advance(5)
    with capture_logs() as logs:
        r.ask("a")
    [start] = events(logs, "on-demand start")
    assert start["model"] == "a" and start["memory_mib"] == 1024 and start["log_level"] == "info"
    assert r.demand.usage("a").last_used == 1005.0, "the start counts as use"


def test_an_idle_stop_is_logged_and_counted_as_an_idle_eviction() -> None:
    m = Evictions()
    r = Rig([od("a", ttl=30.0)], metrics=m)
    r.ask("a")
    r.healthy("a")
    r.clock.advance(30)
    with capture_logs() as logs:
        r.step()
    assert r.state("a") is State.STOPPED
    [idle] = events(logs, "idle: stopping on-demand model")
    assert idle["model"] == "a" and idle["idle_ttl_s"] == 30.0 and idle["log_level"] == "info"
    assert m.seen == [("a", "idle")]


def test_an_eviction_is_logged_counted_and_named_in_the_transition() -> None:
    m = Evictions()
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2), metrics=m)
    r.ask("a")
    r.healthy("a")
    with capture_logs() as logs:
        r.ask("b")
    [ev] = events(logs, "evicting")
    assert ev["model"] == "a" and ev["to_make_room_for"] == "b" and ev["log_level"] == "info"
    assert "evicted to make room for b" in transitions(logs, "a")
    assert m.seen == [("a", "memory")]


def test_a_refusal_is_a_warning_naming_the_model_and_the_reason() -> None:
    r = Rig([od("big", mem=2 * G)], Budget(memory_bytes=G))
    with capture_logs() as logs:
        ready = r.ask("big").result(0)
    [refused] = events(logs, "request refused: the model cannot fit")
    assert refused["log_level"] == "warning" and refused["model"] == "big"
    assert refused["reason"] == ready.message and ready.code == "too_big"


def test_an_unknown_name_is_answered_with_the_name_and_a_cancelled_request_is_dropped() -> None:
    r = Rig([od("a")])
    assert r.ask("nope").result(0) == Readiness("unknown", "no model 'nope'")
    for model in ("nope", "a"):
        gone: Future[Readiness] = Future()
        gone.cancel()                                   # the client left before the loop saw it
        r.step(EnsureRunning(model, gone))
        assert gone.cancelled()
    assert r.state("a") is State.STOPPED and not r.sup.ondemand.pending


def test_requests_still_waiting_at_shutdown_are_answered_for_every_model() -> None:
    r = Rig([od("a"), od("b")])
    fa, fb = r.ask("a"), r.ask("b")
    assert not fa.done() and not fb.done()
    r.q.put(SignalReceived(signal.SIGTERM))
    r.sup.run()                                         # handles the signal, then its shutdown steps
    for f in (fa, fb):
        assert f.result(0) == Readiness("shutting_down", "the daemon is shutting down")


def test_a_model_waiting_for_its_start_does_not_hold_up_the_next_one_in_the_same_pass() -> None:
    r = Rig([od("a"), od("b")])
    r.ask("a")                                          # a: STARTING, its request pending
    r.ask("b")
    assert r.state("b") is State.STARTING, "b waited behind a, which was already starting"


def test_answered_models_do_not_hold_up_the_next_one_in_the_same_pass() -> None:
    r = Rig([od("fatal"), od("b"), od("c"), od("always", lifecycle=LoadPolicy.ALWAYS)])
    r.verifier.bad_models.add("fatal")
    assert r.ask("fatal").result(0).code == "fatal"
    done: Future[CommandResult] = Future()
    r.step(ControlRequest(StopModels(("always",)), done))
    assert done.result(0).ok and r.state("always") is State.STOPPED
    fatal, stopped = Future[Readiness](), Future[Readiness]()
    r.step(EnsureRunning("fatal", fatal), EnsureRunning("b", Future()))
    assert fatal.result(0).code == "fatal" and r.state("b") is State.STARTING
    r.step(EnsureRunning("always", stopped), EnsureRunning("c", Future()))
    assert stopped.result(0).code == "stopped" and r.state("c") is State.STARTING


def test_contended_is_set_while_a_request_waits_for_memory_and_cleared_after() -> None:
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2))
    r.ask("a")
    r.healthy("a")
    assert r.demand.contended() is False
    assert r.demand.enter("a")
    fut = r.ask("b")
    assert r.demand.contended() is True, "b waits for a's memory: the last request out of a must wake the loop"
    r.demand.leave("a")
    r.step()
    assert r.state("b") is State.STARTING
    assert r.demand.contended() is False
    r.healthy("b")
    assert fut.result(0).ok


def test_a_model_drained_for_a_request_that_went_away_takes_requests_again() -> None:
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2), swap=FIFO)
    r.ask("a")
    r.healthy("a")
    assert r.demand.enter("a")
    fut = r.ask("b")
    assert r.demand.usage("a").draining
    del r.models["b"]                                   # b leaves the manifests: its request is answered
    r.step(ManifestsChanged(origin="test"))
    assert fut.result(0).code == "unknown"
    assert not r.demand.usage("a").draining and r.demand.enter("a"), "a need not make room any more"
    assert r.state("a") is State.RUNNING


def test_a_model_still_wanted_for_room_or_stopping_stays_drained() -> None:
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2), swap=FIFO)
    r.ask("a")
    r.healthy("a")
    assert r.demand.enter("a")
    r.ask("b")
    r.step()
    assert r.demand.usage("a").draining, "b still waits for a's room"
    r.demand.leave("a")
    r.step()
    assert r.state("a") is State.STOPPED and r.state("b") is State.STARTING
    assert not r.demand.usage("a").draining, "stopped: open again for its next start"


def test_the_loop_wakes_at_the_earliest_idle_deadline_of_running_unused_on_demand_models() -> None:
    r = Rig([od("a", ttl=30.0), od("b", ttl=100.0), od("busy", ttl=5.0), od("queued", ttl=5.0),
             od("off", ttl=1.0), od("fixed", ttl=2.0, lifecycle=LoadPolicy.ALWAYS)])
    for name in ("a", "b", "busy", "queued"):
        r.ask(name)
        r.healthy(name)
    r.healthy("fixed")
    t0 = r.clock()
    assert r.demand.enter("busy") and r.demand.wait_begin("queued", limit=4)
    assert r.sup.ondemand.idle_deadline(r.sup.slots) == t0 + 30.0, "busy, queued, stopped and always-on models have no TTL"
    assert r.demand.enter("a")
    assert r.sup.ondemand.idle_deadline(r.sup.slots) == t0 + 100.0
    r.clock.advance(10)
    r.demand.leave("a")                                 # a's TTL runs from the end of its request
    r.demand.forget("b")                                # no use recorded: counted from when it became RUNNING
    assert r.sup.ondemand.idle_deadline(r.sup.slots) == t0 + 10.0 + 30.0
    assert r.demand.enter("a")
    assert r.sup.ondemand.idle_deadline(r.sup.slots) == r.sup.slots["b"].lc.since + 100.0
    r.demand.leave("busy"), r.demand.wait_end("queued"), r.demand.leave("a")


def test_no_idle_deadline_without_a_running_on_demand_model() -> None:
    r = Rig([od("a"), od("fixed", ttl=1.0, lifecycle=LoadPolicy.ALWAYS)])
    r.healthy("fixed")
    assert r.sup.ondemand.idle_deadline(r.sup.slots) is None


def test_a_model_with_a_request_in_flight_is_not_the_one_evicted_even_if_least_recently_used() -> None:
    r = Rig([od("a"), od("b"), od("c")], Budget(memory_bytes=2 * G + G // 2))
    r.ask("a")
    r.healthy("a")
    assert r.demand.enter("a")                          # a long completion on a
    r.clock.advance(10)
    r.ask("c")
    r.healthy("c")                                      # c: used after a, idle now
    r.clock.advance(10)
    r.ask("b")
    assert r.state("c") is State.STOPPED and r.state("b") is State.STARTING
    assert r.state("a") is State.RUNNING and not r.demand.usage("a").draining
    r.demand.leave("a")


def test_a_running_model_with_no_recorded_use_idles_from_when_it_became_running() -> None:
    r = Rig([od("a", ttl=30.0), od("b", ttl=30.0)], Budget(memory_bytes=G + G // 2))
    r.ask("a")
    r.clock.advance(5)
    r.healthy("a")                                      # RUNNING since 1005
    r.demand.forget("a")                                # as after an adoption: no request seen yet
    r.clock.advance(29)
    r.step()
    assert r.state("a") is State.RUNNING, "idle since it became RUNNING, 29 s ago"
    r.clock.advance(1)
    r.step()
    assert r.state("a") is State.STOPPED


def test_a_model_with_no_recorded_use_can_be_evicted() -> None:
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2))
    r.ask("a")
    r.healthy("a")
    r.demand.forget("a")
    r.ask("b")
    assert r.state("a") is State.STOPPED and r.state("b") is State.STARTING


def test_removing_a_model_nobody_asked_for_answers_nothing_and_goes_on() -> None:
    r = Rig([od("a"), od("b")])
    fut = r.ask("b")
    del r.models["a"]
    r.step(ManifestsChanged(origin="test"))
    assert "a" not in r.sup.slots and not fut.done() and r.state("b") is State.STARTING


def test_a_starting_model_with_a_known_port_is_not_answered_before_it_is_running() -> None:
    m = od("p")
    m = replace(m, spec=replace(m.spec, host_port=18081))
    r = Rig([m])
    fut = r.ask("p")
    assert r.state("p") is State.STARTING
    route = r.sup.routes()["p"]
    assert route.url is not None and route.state is State.STARTING, "published with its port while starting"
    assert not fut.done(), "answered before the model was healthy"
    r.healthy("p")
    assert fut.result(0).ok


def test_a_model_starting_for_a_queued_request_is_not_stopped_as_idle() -> None:
    r = Rig([od("a", ttl=30.0)])
    fut = r.ask("a")                                    # the request stays queued while a starts
    cid = r.sup.slots["a"].container_id
    r.clock.advance(31)                                 # longer than its idle TTL, shorter than its start timeout
    r.step()
    assert "stop" not in r.runtime.ops(), "stopped as idle (and started again for its request)"
    assert r.state("a") is State.STARTING and r.sup.slots["a"].container_id == cid
    r.healthy("a")
    assert fut.result(0).ok
