"""A manifest change while the model serves: nothing new goes to the old container, its requests in
flight finish (until the stop timeout), then it is recreated; the waiting requests go to the new one.

The loop driven by hand (fake runtime, fake clock); the gateway's side is the shared Demand and the
published routes, as the gateway reads them."""

from __future__ import annotations

from supervisor.control.api import NullMetrics
from supervisor.core.events import ManifestsChanged, Tick
from supervisor.core.lifecycle import State
from supervisor.daemon.loop import LoopSettings

from .helpers import desired
from .test_loop import Harness


class Drains(NullMetrics):
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bool]] = []

    def drained(self, model: str, requests: int, timed_out: bool) -> None:
        self.seen.append((model, requests, timed_out))


def running(settings: LoopSettings = LoopSettings(stop_timeout_s=10.0)) -> tuple[Harness, Drains]:
    h = Harness([desired("a", port=18081, ctx=512)], settings=settings)
    h.sup.demand._wake = lambda: h.q.put(Tick())        # as the daemon wires it: a leave wakes the loop
    metrics = Drains()
    h.sup.metrics = metrics
    h.step()
    h.healthy("a")
    assert h.state("a") is State.RUNNING
    h.runtime.calls.clear()
    return h, metrics


def change(h: Harness) -> None:
    assert isinstance(h.models, dict)
    h.models["a"] = desired("a", port=18081, ctx=1024)
    h.step(ManifestsChanged())


def test_requests_in_flight_finish_on_the_old_container_and_new_ones_wait_for_the_new_one() -> None:
    h, metrics = running()
    demand = h.sup.demand
    assert demand.enter("a") and demand.enter("a")          # two requests in flight on the old container
    old = h.cid("a")
    change(h)
    assert h.state("a") is State.DRAINING
    assert h.runtime.ops() == [], "the old container is left alone while requests are in flight"
    assert not demand.enter("a"), "no new request may enter the draining container"
    route = h.sup.routes()["a"]
    assert route.state is State.DRAINING, "the gateway queues new requests instead of sending them"
    assert [s.state for s in h.sup.snapshot()] == ["DRAINING"]

    demand.leave("a")
    h.step()                                                # the wake: one request still in flight
    assert h.runtime.ops() == [] and h.state("a") is State.DRAINING
    demand.leave("a")                                       # the last one: Demand.leave posts the wake
    h.sup.iteration(block=False)
    assert h.runtime.ops() == ["stop", "remove", "create", "start", "inspect"]
    assert h.state("a") is State.STARTING and h.cid("a") != old
    assert metrics.seen == [("a", 2, False)]
    assert not demand.enter("a"), "still routed nowhere until the new container is healthy"
    h.step()
    h.healthy("a")
    assert h.state("a") is State.RUNNING and h.sup.routes()["a"].state is State.RUNNING
    assert demand.enter("a"), "the new container takes requests"


def test_a_drain_that_outlasts_the_stop_timeout_stops_the_old_container_anyway() -> None:
    h, metrics = running(LoopSettings(stop_timeout_s=10.0))
    assert h.sup.demand.enter("a")
    change(h)
    assert h.state("a") is State.DRAINING
    h.clock.advance(9.9)
    h.step()
    assert h.runtime.ops() == []
    assert h.sup._wait_s() <= 0.1 + 1e-9, "the loop wakes at the drain deadline"
    h.clock.advance(0.1)
    h.step()
    assert h.runtime.ops() == ["stop", "remove", "create", "start", "inspect"]
    assert metrics.seen == [("a", 1, True)]


def test_nothing_in_flight_recreates_at_once() -> None:
    h, metrics = running()
    change(h)
    assert h.runtime.ops() == ["stop", "remove", "create", "start", "inspect"]
    assert h.state("a") is State.STARTING and metrics.seen == [("a", 0, False)]


def test_a_change_undone_while_draining_serves_again_without_a_recreate() -> None:
    h, _ = running()
    demand = h.sup.demand
    assert demand.enter("a")
    old = h.cid("a")
    change(h)
    assert h.state("a") is State.DRAINING
    assert isinstance(h.models, dict)
    h.models["a"] = desired("a", port=18081, ctx=512)
    h.step(ManifestsChanged())
    assert h.state("a") is State.RUNNING and h.cid("a") == old and h.runtime.ops() == []
    assert demand.enter("a")
