"""On-demand use and eviction on the fake clock (issue 22's survivors at daemon/demand.py and
daemon/ondemand.py): the idle TTL counts from a request's end, and a model with requests queued for
it is not the one evicted."""

from __future__ import annotations

from supervisor.core.lifecycle import State
from supervisor.core.scheduler import Budget
from supervisor.daemon.demand import Demand

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
