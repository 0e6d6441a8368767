"""On-demand use and eviction on the fake clock (issue 22's survivors at core/demand.py and
daemon/ondemand.py): the idle TTL counts from a request's end, and a model with requests queued for
it is not the one evicted."""

from __future__ import annotations

from supervisor.core.lifecycle import State
from supervisor.core.scheduler import Budget
from supervisor.core.demand import Demand, Usage

from .fakes import FakeClock
from .test_ondemand_loop import G, Rig, od


def test_leave_counts_as_use_at_the_moment_the_request_ends() -> None:
    clock = FakeClock(1000.0)
    d = Demand(clock)
    assert d.enter("m")
    assert d.usage("m").last_used == 1000.0
    clock.advance(90)                                   # a long completion
    d.leave("m")
    assert d.usage("m").last_used == 1090.0
    clock.advance(5)
    assert d.enter("m", touch=False)                    # monitoring through /upstream/: not use
    clock.advance(5)
    d.leave("m", touch=False)
    assert d.usage("m").last_used == 1090.0


def test_the_idle_ttl_runs_from_the_end_of_a_long_request_not_its_start() -> None:
    r = Rig([od("a", ttl=30.0)])
    r.ask("a")
    r.healthy("a")
    assert r.demand.enter("a")
    r.clock.advance(100)                                # a request three TTLs long
    r.demand.leave("a")
    r.clock.advance(29)
    r.step()
    assert r.state("a") is State.RUNNING, "stopped 29 s after its last request ended"
    r.clock.advance(1)
    r.step()
    assert r.state("a") is State.STOPPED


def test_a_model_with_requests_queued_for_it_is_not_evicted_even_if_least_recently_used() -> None:
    r = Rig([od("a"), od("b"), od("c")], Budget(memory_bytes=2 * G + G // 2))
    r.ask("a")                                          # a starts; a gateway request waits for it
    assert r.demand.wait_begin("a", limit=4)
    r.clock.advance(10)
    r.ask("c")
    r.healthy("c")                                      # c: used after a, idle, nothing queued
    r.clock.advance(10)
    r.ask("b")                                          # room for one more: c must go, not a
    assert r.state("c") is State.STOPPED and r.state("b") is State.STARTING
    assert r.state("a") is State.STARTING and not r.demand.usage("a").draining
    r.demand.wait_end("a")


class Wakes:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


def test_the_loop_is_woken_only_by_the_last_request_out_of_a_draining_or_awaited_model() -> None:
    wake, clock = Wakes(), FakeClock()
    d = Demand(clock, wake)
    assert d.usage("a") == Usage(0, 0, None, False) and d.contended() is False
    d.enter("a"), d.enter("a"), d.enter("b")
    d.leave("a")
    d.leave("b")
    assert wake.n == 0, "nobody waits for memory and nothing drains: no wake"
    d.mark_draining("a")
    assert d.usage("a") == Usage(1, 0, clock(), True) and d.usage("b") == Usage(0, 0, clock(), False)
    d.leave("a")
    assert wake.n == 1, "the last request out of a draining model wakes the loop"
    d.set_contended(True)
    d.enter("b"), d.enter("b")
    d.leave("b")
    assert wake.n == 1, "one still in flight"
    d.leave("b")
    assert wake.n == 2, "the loop waits for memory: the last one out wakes it"
    assert d.wait_begin("c", 2) and d.wait_begin("c", 2)
    d.wait_end("c")
    assert wake.n == 2
    d.wait_end("c")
    assert wake.n == 3
    d.set_contended(False)
    assert d.wait_begin("c", 1)
    d.wait_end("c")
    assert wake.n == 3, "no wake when nothing waits for memory"


def test_counts_are_per_model_and_never_negative_and_forget_clears_one_model() -> None:
    d = Demand(FakeClock())
    d.leave("ghost")
    d.wait_end("ghost")
    assert d.usage("ghost") == Usage(0, 0, FakeClock()(), False)
    d.enter("a"), d.wait_begin("a", 5), d.enter("b"), d.mark_draining("a"), d.mark_draining("b")
    assert not d.try_drain("a") and not d.try_drain("b")
    d.forget("a")
    assert d.usage("a") == Usage(0, 0, None, False) and d.usage("b").inflight == 1 and d.draining() == {"b"}
    assert d.try_drain("a")
    d.forget("only-draining")                           # in none of the counts: forgetting it is harmless
    d.mark_draining("w"), d.forget("w")
    assert d.draining() == {"b", "a"}


def test_touch_counts_now_as_the_last_use() -> None:
    clock = FakeClock(50.0)
    d = Demand(clock)
    clock.advance(7)
    d.touch("m")
    assert d.usage("m").last_used == 57.0
