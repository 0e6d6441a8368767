"""The on-demand scheduler on its own: slots, a Demand and a budget in; transitions and answers out."""

from __future__ import annotations

import random
from concurrent.futures import Future

from supervisor.control.api import NullMetrics
from supervisor.core.commands import Readiness
from supervisor.core.demand import Demand
from supervisor.core.events import EnsureRunning
from supervisor.core.lifecycle import Lifecycle, ProbeOutcome, State
from supervisor.core.routing import Route
from supervisor.core.scheduler import Budget
from supervisor.core.spec import LoadPolicy, Serving
from supervisor.daemon.ondemand import OnDemandScheduler
from supervisor.daemon.state import Slot

from .helpers import desired

G = 1 << 30


def od_slot(name: str, mem: int = G) -> Slot:
    d = desired(name, serving=Serving(lifecycle=LoadPolicy.ON_DEMAND, memory_bytes=mem))
    return Slot(d, Lifecycle(name, health=d.health, restart=d.restart, rng=random.Random(1), enabled=False))


def ask(s: OnDemandScheduler, model: str, *, known: bool = True, stopping: bool = False) -> Future[Readiness]:
    f: Future[Readiness] = Future()
    s.request(EnsureRunning(model, f), known=known, stopping=stopping)
    return f


def test_a_request_is_held_until_its_model_runs_and_schedule_returns_the_start() -> None:
    slots = {"a": od_slot("a")}
    s = OnDemandScheduler(Demand(lambda: 0.0), Budget(memory_bytes=2 * G), NullMetrics())
    f = ask(s, "a")
    assert not f.done() and s.pending == {"a"}
    assert s.schedule(slots, 10.0) == [] and slots["a"].lc.enabled, "wanted running: the planner starts it"
    assert s.schedule(slots, 11.0) == [] and s.pending == {"a"}
    s.answer_ready({"a": Route("a", State.STARTING, "127.0.0.1", 8081)})
    assert not f.done(), "not RUNNING yet"
    route = Route("a", State.RUNNING, "127.0.0.1", 8081)
    s.answer_ready({"a": route})
    assert f.result(0) == Readiness("ok", route=route) and not s.pending


def test_making_room_returns_the_victims_stop_transition() -> None:
    slots = {"a": od_slot("a"), "b": od_slot("b")}
    a = slots["a"].lc
    a.start_requested(0.0)
    a.start_attempt(0.0)
    a.container_started(0.0)
    a.probe(0.0, ProbeOutcome.OK)
    assert a.state is State.RUNNING
    s = OnDemandScheduler(Demand(lambda: 0.0), Budget(memory_bytes=G + G // 2), NullMetrics())
    fb = ask(s, "b")
    [t] = s.schedule(slots, 5.0)
    assert (t.model, t.to_state, t.reason) == ("a", State.STOPPING, "evicted to make room for b")
    assert not fb.done() and s.pending == {"b"}


def test_unknown_shutting_down_and_too_big_are_answered_without_a_transition() -> None:
    s = OnDemandScheduler(Demand(lambda: 0.0), Budget(memory_bytes=G), NullMetrics())
    assert ask(s, "nope", known=False).result(0) == Readiness("unknown", "no model 'nope'")
    assert ask(s, "a", stopping=True).result(0) == Readiness("shutting_down", "the daemon is shutting down")
    big = ask(s, "big")
    assert s.schedule({"big": od_slot("big", mem=2 * G)}, 0.0) == []
    assert big.result(0).code == "too_big" and not s.pending


def test_answer_all_answers_every_waiting_request() -> None:
    s = OnDemandScheduler(Demand(lambda: 0.0), Budget(), NullMetrics())
    fs = [ask(s, "a"), ask(s, "b"), ask(s, "a")]
    s.answer_all("shutting_down", "bye")
    assert [f.result(0) for f in fs] == [Readiness("shutting_down", "bye")] * 3 and not s.pending
