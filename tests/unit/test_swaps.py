"""Swap-aware scheduling on a fake clock, through the real loop (FakeRuntime): a small gateway simulator
sends requests (arrive, wait for the model, enter, take their service time, leave), the loop starts,
holds and evicts models. Properties: no request starves, each waits at most max_swap_wait_s plus the
in-flight work it waits behind and the starts in between; models that fit together never wait for
each other; and batch swaps far less than strict arrival order on alternating clients."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.core.commands import Readiness
from supervisor.core.events import EnsureRunning
from supervisor.core.lifecycle import State
from supervisor.core.scheduler import Budget, SwapPolicy, SwapSettings

from .test_ondemand_loop import FIFO, G, Rig, od

START_S = 2.0      # a cold start on the fake clock


@dataclass
class Req:
    model: str
    arrive: float
    service: float
    client: int = -1
    fut: Future[Readiness] | None = None
    queued: bool = False
    entered: float | None = None
    done: float | None = None

    @property
    def wait(self) -> float:
        assert self.entered is not None
        return self.entered - self.arrive


@dataclass
class Sim:
    rig: Rig
    reqs: list[Req] = field(default_factory=list)
    healthy_at: dict[str, float] = field(default_factory=dict)
    starts: int = 0
    think: dict[int, list[Req]] = field(default_factory=dict)   # closed-loop clients: their next requests

    @property
    def now(self) -> float:
        return self.rig.clock()

    def _ask(self, q: Req) -> None:
        q.fut = Future()
        self.rig.step(EnsureRunning(q.model, q.fut))

    def _arrive(self, q: Req) -> None:
        r = self.rig
        route = r.sup.routes().get(q.model)
        if route is not None and route.state is State.RUNNING and route.url is not None and r.demand.enter(q.model):
            q.entered = self.now
            return
        assert r.demand.wait_begin(q.model, 10_000)
        q.queued = True
        self._ask(q)

    def _poll(self) -> bool:
        """Requests whose answer came: enter (or ask again). True if anything changed."""
        changed = False
        for q in self.reqs:
            if q.queued and q.fut is not None and q.fut.done():
                ready = q.fut.result()
                assert ready.ok, ready
                if self.rig.demand.enter(q.model, admitted=True):
                    q.entered, q.queued = self.now, False
                    self.rig.demand.wait_end(q.model)
                else:
                    self._ask(q)
                changed = True
        return changed

    def run(self, limit_s: float = 2000.0) -> None:
        r = self.rig
        t0 = self.now
        while any(q.done is None for q in self.reqs) or any(self.think.values()):
            assert self.now - t0 < limit_s, "a request starved: " + repr([q for q in self.reqs if q.entered is None])
            for q in self.reqs:
                if q.entered is not None and q.done is None and q.entered + q.service <= self.now:
                    q.done = self.now
                    r.demand.leave(q.model)
                    if self.think.get(q.client):
                        nxt = self.think[q.client].pop(0)
                        nxt.arrive = self.now
                        self.reqs.append(nxt)
            for q in list(self.reqs):
                if q.entered is None and not q.queued and q.arrive <= self.now:
                    self._arrive(q)
            for m, at in list(self.healthy_at.items()):
                if at <= self.now and r.state(m) is State.STARTING:
                    r.healthy(m)
                    del self.healthy_at[m]
            r.step()
            while self._poll():
                r.step()
            for m, slot in r.sup.slots.items():
                if slot.lc.state is State.STARTING and m not in self.healthy_at:
                    self.healthy_at[m] = self.now + START_S
                    self.starts += 1
            nexts = [q.arrive for q in self.reqs if q.entered is None and not q.queued and q.arrive > self.now]
            nexts += [q.entered + q.service for q in self.reqs if q.entered is not None and q.done is None]
            nexts += list(self.healthy_at.values())
            wait = r.sup._wait_s()
            if wait > 0:
                nexts.append(self.now + wait)
            later = [t for t in nexts if t > self.now]
            r.clock.now = min(later) if later else self.now + 0.01


def two_models(swap: SwapSettings, *, fit: int = 1) -> Rig:
    return Rig([od("a"), od("b"), od("c")], Budget(memory_bytes=fit * G + G // 2), swap=swap)


BATCH = st.sampled_from([SwapSettings(SwapPolicy.BATCH, 10.0), SwapSettings(SwapPolicy.BATCH, 3.0),
                         SwapSettings(SwapPolicy.BATCH, 0.5)])
POLICIES = st.one_of(BATCH, st.just(FIFO))
REQUESTS = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 60), st.floats(0.05, 3.0)),
                    min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(swap=POLICIES, requests=REQUESTS)
def test_no_request_starves_and_each_waits_at_most_the_swap_wait_plus_what_it_waits_behind(
        swap: SwapSettings, requests: list[tuple[str, float, float]]) -> None:
    sim = Sim(two_models(swap))
    sim.reqs = [Req(m, sim.now + t, s) for m, t, s in requests]
    sim.run()
    longest = max(s for _, _, s in requests)
    for q in sim.reqs:
        if swap.policy is SwapPolicy.FIFO:
            # strict arrival order: behind every older request, each at most a start and its answer
            ahead = sum(1 for o in sim.reqs if o.arrive <= q.arrive and o is not q)
            bound = (ahead + 1) * (START_S + longest) + 0.05
        else:
            # Behind the older requests for other models, each (once the oldest) at most the work in flight
            # and a start in progress, then its own model's start; first at most the swap wait.
            ahead = sum(1 for o in sim.reqs if o.arrive <= q.arrive and o.model != q.model)
            bound = swap.grace_s + (ahead + 1) * (longest + 2 * START_S) + 0.05
        assert q.wait <= bound, (q, bound)


@settings(max_examples=100, deadline=None)
@given(requests=REQUESTS.map(lambda xs: [x for x in xs if x[0] != "c"] or [("a", 0.0, 1.0)]))
def test_with_two_models_a_request_waits_at_most_the_swap_wait_plus_one_swap(
        requests: list[tuple[str, float, float]]) -> None:
    """The default swap wait (longer than a start and an answer): each model gets one turn at most."""
    swap = SwapSettings()
    sim = Sim(two_models(swap))
    sim.reqs = [Req(m, sim.now + t, s) for m, t, s in requests]
    sim.run()
    longest = max(s for _, _, s in requests)
    # the other model's turn: its swap wait (or, at most, its own start and one answer), the work in flight
    # when that ends, then this one's start
    bound = max(swap.grace_s, START_S + longest) + longest + START_S + 0.05
    worst = max(sim.reqs, key=lambda q: q.wait)
    assert worst.wait <= bound, (worst, bound)


@settings(max_examples=30, deadline=None)
@given(swap=POLICIES, requests=REQUESTS)
def test_models_that_fit_together_never_wait_for_each_other(
        swap: SwapSettings, requests: list[tuple[str, float, float]]) -> None:
    sim = Sim(two_models(swap, fit=3))
    sim.reqs = [Req(m, sim.now + t, s) for m, t, s in requests]
    sim.run()
    assert max(q.wait for q in sim.reqs) <= START_S + 1e-9, "at most its own cold start"
    assert sim.starts == len({m for m, _, _ in requests}), "no model stopped for another"


def alternating(swap: SwapSettings, clients: int = 4, per_client: int = 10) -> Sim:
    """Clients that each alternate a and b, one request at a time, half starting with each: the bench."""
    sim = Sim(two_models(swap))
    for c in range(clients):
        first = "ab"[c % 2]
        chain = [Req("ab"[("ab".index(first) + i) % 2], 0.0, 0.5, client=c) for i in range(per_client)]
        chain[0].arrive = sim.now + c * 0.1
        sim.reqs.append(chain[0])
        sim.think[c] = chain[1:]
    sim.run()
    return sim


def test_batch_swaps_at_least_three_times_less_than_strict_arrival_order_on_alternating_clients() -> None:
    batch, fifo = alternating(SwapSettings(SwapPolicy.BATCH, 10.0)), alternating(FIFO)
    assert len(batch.reqs) == len(fifo.reqs) == 40
    swaps = {n: sum(s.count for s in sim.rig.sup.ondemand.swaps.values()) for n, sim in (("batch", batch), ("fifo", fifo))}
    assert swaps["fifo"] >= 3 * swaps["batch"], (batch.starts, fifo.starts, swaps)
    assert swaps["batch"] == batch.starts - 1 and swaps["fifo"] == fifo.starts - 1, "every start after the first swapped"
    done = {n: max(q.done or 0.0 for q in sim.reqs) - 1000.0 for n, sim in (("batch", batch), ("fifo", fifo))}
    assert done["fifo"] >= 1.5 * done["batch"], done


def test_a_model_kept_busy_makes_room_once_the_other_has_waited_max_swap_wait() -> None:
    """a never runs out of requests; b's one request is served after max_swap_wait_s, a's in-flight
    work and b's start, and the status shows the swap and its wait."""
    sim = Sim(two_models(SwapSettings(SwapPolicy.BATCH, 10.0)))
    sim.reqs = [Req("a", sim.now + i * 0.5, 1.0) for i in range(80)] + [Req("b", sim.now + 5.0, 1.0)]
    sim.run()
    b = sim.reqs[-1]
    assert 10.0 <= b.wait <= 10.0 + 1.0 + START_S + 0.05, b
    a_after = [q for q in sim.reqs[:-1] if q.arrive > b.arrive + 10.0]
    assert a_after and all(q.entered is not None and q.entered > b.entered for q in a_after[:3]), \
        "a's requests after the swap wait for b's turn"
    status = {s.name: s for s in sim.rig.sup.snapshot()}
    assert status["b"].swaps == 1 and status["b"].swap_wait_s is not None
    assert 10.0 <= status["b"].swap_wait_s <= 10.0 + 1.0 + 0.05


def test_fifo_holds_the_loaded_model_at_once_for_an_older_request() -> None:
    sim = Sim(two_models(FIFO))
    sim.reqs = [Req("a", sim.now + i * 0.5, 1.0) for i in range(20)] + [Req("b", sim.now + 5.0, 1.0)]
    sim.run()
    b = sim.reqs[-1]
    assert b.wait <= 1.0 + START_S + 0.05, "only the work in flight and b's start"
