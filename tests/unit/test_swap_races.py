"""The races around a swap: a request the gateway gave up on (start timeout, client gone) leaves the
queue, so nothing starts or is evicted for it, and an answer that came too late hands its admission
back; a request that arrives as the idle TTL fires cancels the stop, or waits one stop and one start."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

from supervisor.core.commands import Readiness
from supervisor.core.events import EnsureRunning
from supervisor.core.lifecycle import State
from supervisor.core.scheduler import Budget

from .test_gateway_app import RUNNING, STOPPED, FakeBackend, client
from .test_ondemand_loop import G, Rig, od


def test_a_request_withdrawn_while_waiting_for_room_starts_and_evicts_nothing() -> None:
    r = Rig([od("a"), od("b")], Budget(memory_bytes=G + G // 2))
    r.ask("a")
    r.healthy("a")
    assert r.demand.enter("a")                 # a is busy: b waits for its swap wait
    fut: Future[Readiness] = Future()
    r.step(EnsureRunning("b", fut))
    assert not fut.done() and r.state("b") is State.STOPPED
    assert fut.cancel(), "the gateway's cancel() takes it out of the queue (the loop has not answered it)"
    r.clock.advance(60)
    r.step()
    assert r.state("a") is State.RUNNING and r.state("b") is State.STOPPED, "no start for nobody, no eviction"
    assert r.demand.enter("a"), "a is not held for a request that went away"
    assert r.sup.ondemand.pending == frozenset()


def test_the_gateway_cancels_its_request_on_a_start_timeout() -> None:
    b = FakeBackend(STOPPED)
    futures: list[Future[Readiness]] = []
    ensure = b.ensure

    def keep(model: str) -> Future[Readiness]:
        futures.append(ensure(model))
        return futures[-1]

    b.ensure = keep  # type: ignore[method-assign]

    async def go() -> int:
        async with client(b) as c:
            return (await c.post("/v1/chat/completions", json={"model": "m"})).status_code

    assert asyncio.run(go()) == 504
    assert futures and all(f.cancelled() for f in futures), "withdrawn, not left for the loop to start"
    assert b.demand.usage("m").waiting == 0


def test_an_answer_the_gateway_no_longer_waits_for_hands_its_admission_back() -> None:
    """The loop answered (ok, admitted) just as the wait ended: cancel() fails, and the admission the
    request will never use is released, else the model could never be drained."""
    b = FakeBackend(RUNNING.__class__(**{**RUNNING.__dict__, "state": State.STARTING, "port": None}))
    late: list[Future[Readiness]] = []

    def ensure(model: str) -> Future[Readiness]:
        fut: Future[Readiness] = Future()
        assert fut.set_running_or_notify_cancel()      # the loop is answering it: too late to cancel
        late.append(fut)
        return fut

    b.ensure = ensure  # type: ignore[method-assign]

    async def go() -> int:
        async with client(b) as c:
            return (await c.post("/v1/chat/completions", json={"model": "m"})).status_code

    assert asyncio.run(go()) == 504
    b.demand.admit("m")
    late[0].set_result(Readiness("ok", route=RUNNING))
    assert b.demand.usage("m").admitted == 0
    assert b.demand.try_drain("m"), "nothing holds the model any more"


def test_a_request_in_the_same_pass_as_the_idle_ttl_cancels_the_stop() -> None:
    r = Rig([od("a", ttl=30.0)])
    r.ask("a")
    r.healthy("a")
    r.clock.advance(30)                        # the TTL fires in this pass, and a request arrives in it
    fut: Future[Readiness] = Future()
    r.step(EnsureRunning("a", fut))
    assert r.state("a") is State.RUNNING, "the stop had not begun: it is cancelled"
    assert fut.result(0).ok
    assert r.runtime.ops().count("stop") == 0


def test_a_request_just_after_the_idle_stop_began_waits_one_stop_and_one_start() -> None:
    r = Rig([od("a", ttl=30.0)])
    r.ask("a")
    r.healthy("a")
    r.clock.advance(30)
    r.step()                                   # the stop began (and, on the fake runtime, ended)
    assert r.state("a") is State.STOPPED
    fut: Future[Readiness] = Future()
    r.step(EnsureRunning("a", fut))
    assert r.state("a") is State.STARTING, "started again in the pass that heard the request: no wait between"
    r.healthy("a")
    assert fut.result(0).ok
