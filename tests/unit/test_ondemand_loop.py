"""The loop's gateway side, driven by hand: EnsureRunning answered when RUNNING, on-demand starts,
evictions under the budget, idle stops on a fake clock, refusals, and Demand's atomic drain."""

from __future__ import annotations

import queue
import random
from concurrent.futures import Future

import pytest
from structlog.testing import capture_logs

from supervisor.control.api import CommandResult, MetricsSink, StopModels
from supervisor.core.commands import Readiness
from supervisor.core.events import ControlRequest, EnsureRunning, Event, ProbeResult
from supervisor.core.lifecycle import ProbeOutcome, State
from supervisor.core.scheduler import Budget, SwapPolicy, SwapSettings
from supervisor.core.spec import DesiredModel, LoadPolicy, Serving
from supervisor.core.demand import Demand
from supervisor.daemon.loop import Supervisor

from .fakes import FakeClock, FakeProber, FakeRuntime, FakeVerifier
from .helpers import desired

G = 1 << 30


FIFO = SwapSettings(SwapPolicy.FIFO)


def od(name: str, *, mem: int = G, ttl: float = 300.0, lifecycle: LoadPolicy = LoadPolicy.ON_DEMAND,
       preload: bool = False, ctx: int = 512) -> DesiredModel:
    return desired(name, port=0, ctx=ctx, serving=Serving(aliases=(f"{name}-alias",), lifecycle=lifecycle, idle_ttl_s=ttl,
                                                 memory_bytes=mem, memory_basis="limit", preload=preload))


class Rig:
    def __init__(self, models: list[DesiredModel], budget: Budget = Budget(),
                 metrics: MetricsSink | None = None, swap: SwapSettings = SwapSettings()) -> None:
        self.runtime, self.clock, self.prober = FakeRuntime(), FakeClock(), FakeProber()
        self.models = {m.name: m for m in models}         # what the manifests say; a test may change it
        self.q: queue.Queue[Event] = queue.Queue()
        self.woken = 0
        self.demand = Demand(self.clock, wake=self._wake)
        self.verifier = FakeVerifier()
        self.sup = Supervisor(events=self.q, runtime=self.runtime, verifier=self.verifier,
                              load_desired=lambda: dict(self.models), prober=self.prober,
                              clock=self.clock, rng=random.Random(1), demand=self.demand, budget=budget,
                              metrics=metrics, swap=swap)
        self.sup._reload(apply=True, origin="start")
        self.step()

    def _wake(self) -> None:
        self.woken += 1

    def step(self, *events: Event) -> None:
        for e in events:
            self.q.put(e)
        self.sup.iteration(block=False)

    def ask(self, model: str) -> Future[Readiness]:
        """A request that is answered and then goes away (an admission it never uses goes back, as the
        gateway's does); `enter` to have one in flight."""
        fut: Future[Readiness] = Future()
        fut.add_done_callback(lambda f: self.demand.release(model) if f.result().ok else None)
        self.step(EnsureRunning(model, fut))
        return fut

    def state(self, model: str) -> State:
        return self.sup.slots[model].lc.state

    def healthy(self, model: str) -> None:
        cid = self.sup.slots[model].container_id
        assert cid is not None
        self.runtime.containers[cid] = self.runtime.containers[cid].__class__(
            **{**self.runtime.containers[cid].__dict__, "host_port": 40000 + len(model)})
        self.sup.cache[cid] = self.runtime.containers[cid]
        self.step(ProbeResult(model, cid, ProbeOutcome.OK, 0.01))


def test_on_demand_models_wait_for_a_request_then_the_answer_comes_at_running() -> None:
    r = Rig([od("a")])
    assert r.state("a") is State.STOPPED and r.runtime.ops() == ["list"]
    fut = r.ask("a")
    assert r.state("a") is State.STARTING and "create" in r.runtime.ops()
    assert not fut.done(), "no answer before the model is healthy"
    r.healthy("a")
    ready = fut.result(0)
    assert ready.ok and ready.route is not None and ready.route.url == "http://127.0.0.1:40001"
    assert r.sup.routes()["a-alias"].name == "a"


def test_a_request_for_b_evicts_idle_a_first_then_starts_b() -> None:
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2))
    r.ask("a")
    r.healthy("a")
    fut = r.ask("b")
    ops = r.runtime.ops()
    assert ops.index("stop") < len(ops) - 1 - ops[::-1].index("create"), f"stop a before creating b: {ops}"
    assert r.state("a") is State.STOPPED and r.state("b") is State.STARTING
    r.healthy("b")
    assert fut.result(0).ok


def _swap_back_to_a(r: Rig) -> Future[Readiness]:
    """a ran and was evicted by b; now a request for a evicts b again."""
    r.ask("a")
    r.healthy("a")
    r.ask("b")
    r.healthy("b")
    r.runtime.prepared.clear()
    return r.ask("a")


def test_a_swap_prepares_the_target_s_stopped_container_before_the_stop_that_makes_its_room() -> None:
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2))
    assert r.runtime.prepared == [] and r.runtime.held == set()
    fut = _swap_back_to_a(r)
    assert r.runtime.held == {"a", "b"}, "on-demand models' containers are created held"
    a, b = r.sup.slots["a"].container_id, r.sup.slots["b"].container_id
    assert a is not None and b is not None
    [(prepared, at)] = r.runtime.prepared
    assert prepared == a
    later = r.runtime.calls[at:]
    assert later.index(("stop", b)) < later.index(("start", a)), f"b stopped, then a started: {later}"
    assert ("stop", b) not in r.runtime.calls[:at], "prepared before b's stop began"
    assert r.state("a") is State.STARTING
    r.healthy("a")
    assert fut.result(0).ok


def test_a_swap_that_waits_for_a_busy_model_prepares_its_target_while_it_waits_once() -> None:
    """fifo: b is busy, so a's start waits for b's request in flight, then b's stop. a's container is prepared
    when b is held, not when b's stop comes, and once for that hold, however many passes run meanwhile."""
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2), swap=FIFO)
    r.ask("a")
    r.healthy("a")
    r.ask("b")
    r.healthy("b")
    assert r.demand.enter("b")                  # a request in flight on b
    r.runtime.prepared.clear()
    fut = r.ask("a")
    a, b = r.sup.slots["a"].container_id, r.sup.slots["b"].container_id
    assert r.state("b") is State.RUNNING and r.state("a") is State.STOPPED, "b is busy: a waits"
    assert [c for c, _ in r.runtime.prepared] == [a], "prepared while b finishes its request"
    for _ in range(3):
        r.step()
    assert [c for c, _ in r.runtime.prepared] == [a], "once per hold, not at every pass"
    r.demand.leave("b")
    r.step()
    assert r.state("b") is State.STOPPED and r.state("a") is State.STARTING
    (_, first), = r.runtime.prepared[:1]
    assert ("stop", b) in r.runtime.calls[first:], "the prepare came before b's stop"
    r.healthy("a")
    assert fut.result(0).ok


def test_nothing_is_prepared_for_a_first_start_a_cold_start_or_a_container_of_an_old_config() -> None:
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2))
    r.ask("a")
    r.healthy("a")
    r.ask("b")                                  # b has no container yet: it is created after a's stop
    assert r.runtime.prepared == []
    r.healthy("b")
    r.models["a"] = od("a", ctx=1024)           # a's config changed: its old container is recreated, not started
    r.sup._reload(apply=True, origin="test")
    r.step()
    r.ask("a")
    assert r.runtime.prepared == []
    always = Rig([od("c", lifecycle=LoadPolicy.ALWAYS)])
    assert always.runtime.held == set(), "an always-on model's container is created plain"


def test_a_model_with_a_request_in_flight_is_only_stopped_when_it_is_done() -> None:
    """fifo: a busy model makes room at once (no new request enters), once those in flight are done."""
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2), swap=FIFO)
    r.ask("a")
    r.healthy("a")
    assert r.demand.enter("a")
    fut = r.ask("b")
    assert r.state("a") is State.RUNNING and r.state("b") is State.STOPPED, "a is busy: b waits"
    assert not r.demand.enter("a"), "a is draining: no new request enters it"
    r.demand.leave("a")
    assert r.woken >= 1, "the last request out wakes the loop"
    r.step()
    assert r.state("a") is State.STOPPED and r.state("b") is State.STARTING
    r.healthy("b")
    assert fut.result(0).ok


def test_always_on_models_are_never_evicted_and_too_big_is_refused_at_once() -> None:
    r = Rig([od("fixed", lifecycle=LoadPolicy.ALWAYS), od("big", mem=2 * G)], Budget(memory_bytes=2 * G))
    assert r.state("fixed") is State.STARTING
    fut = r.ask("big")
    ready = fut.result(0)
    assert ready.code == "too_big" and "needs 2048 MiB" in ready.message
    assert r.state("fixed") is State.STARTING and r.state("big") is State.STOPPED


def test_idle_model_is_stopped_after_its_ttl_on_the_fake_clock() -> None:
    r = Rig([od("a", ttl=30.0)])
    r.ask("a")
    r.healthy("a")
    r.demand.enter("a")
    r.demand.leave("a")
    r.clock.advance(29)
    r.step()
    assert r.state("a") is State.RUNNING
    assert r.sup._wait_s() <= 1.0 + 1e-9, "the loop wakes when the TTL runs out"
    r.clock.advance(1)
    with capture_logs() as logs:
        r.step()
    assert r.state("a") is State.STOPPED
    assert any(e["event"] == "transition" and e["to"] == "STOPPING" and e["reason"] == "idle for 30s" for e in logs)
    fut = r.ask("a")
    assert r.state("a") is State.STARTING, "the next request starts it again"
    r.healthy("a")
    assert fut.result(0).ok


def test_fatal_unknown_and_operator_stopped_are_answered_with_their_reason() -> None:
    r = Rig([od("a"), od("always", lifecycle=LoadPolicy.ALWAYS)])
    r.verifier.bad_models.add("a")
    first = r.ask("a").result(0)                 # its start is refused: FATAL through the lifecycle
    assert r.state("a") is State.FATAL and "create" not in [op for op, arg in r.runtime.calls if arg == "a"]
    assert first.code == "fatal" and "SHA-256 0000" in first.message
    assert r.ask("a").result(0).code == "fatal"
    assert r.ask("nope").result(0).code == "unknown"
    done: Future[CommandResult] = Future()
    r.step(ControlRequest(StopModels(("always",)), done))   # the operator's stop
    assert done.result(0).ok and r.state("always") is State.STOPPED
    stopped = r.ask("always").result(0)
    assert stopped.code == "stopped" and "llama-supervisorctl start always" in stopped.message


def test_demand_drain_is_atomic_against_enter() -> None:
    d = Demand(FakeClock())
    assert d.enter("m")
    assert not d.try_drain("m"), "in flight: not drained"
    assert d.enter("m"), "a failed try_drain leaves the model open"
    d.leave("m")
    d.leave("m")
    assert d.wait_begin("m", limit=1) and not d.wait_begin("m", limit=1)
    assert not d.try_drain("m"), "a request waiting for it: not drained"
    d.wait_end("m")
    assert d.try_drain("m") and not d.enter("m")
    d.undrain("m")
    assert d.enter("m")


def test_status_shows_how_long_the_last_start_took_to_be_seen_healthy() -> None:
    """`status` says what a cold start costs: the last load of a start this daemon made (the starting
    probes learn from the same figure)."""
    r = Rig([od("a")])
    assert {m.name: m for m in r.sup.snapshot()}["a"].load_s is None     # never started: nothing to tell
    r.ask("a")
    r.clock.now += 2.5
    r.healthy("a")
    assert r.state("a") is State.RUNNING
    assert {m.name: m for m in r.sup.snapshot()}["a"].load_s == pytest.approx(2.5, abs=0.05)
