"""The loop's container part on its own: an event, the slots and the cache in; transitions and a resync out."""

from __future__ import annotations

import random

from supervisor.control.api import NullMetrics
from supervisor.core.events import ContainerAction, ContainerEvent
from supervisor.core.lifecycle import Lifecycle, ProbeOutcome, State
from supervisor.core.observed import ObservedContainer
from supervisor.daemon.containers import ContainerEvents, Heard
from supervisor.daemon.state import Slot

from .fakes import FakeProber, FakeRuntime
from .helpers import desired, observed


def running(name: str, cid: str) -> Slot:
    d = desired(name)
    lc = Lifecycle(name, health=d.health, restart=d.restart, rng=random.Random(1))
    lc.start_attempt(0.0)
    lc.container_started(0.0)
    lc.probe(0.0, ProbeOutcome.OK)
    assert lc.state is State.RUNNING
    return Slot(d, lc, container_id=cid)


def test_a_container_started_by_someone_else_asks_for_a_resync() -> None:
    parts = ContainerEvents(FakeRuntime(), NullMetrics(), FakeProber())
    heard = parts.on_event(ContainerEvent(ContainerAction.START, "c-x", "x"), {}, {}, 0.0)
    assert heard == Heard(resync=True)


def test_a_removed_container_is_an_exit_and_the_slot_forgets_it() -> None:
    slots = {"m": running("m", "c-m")}
    cache: dict[str, ObservedContainer] = {"c-m": observed("m", cid="c-m")}
    runtime = FakeRuntime()                     # the engine no longer has it
    heard = ContainerEvents(runtime, NullMetrics(), FakeProber()).on_event(
        ContainerEvent(ContainerAction.DIE, "c-m", "m", exit_code=137), slots, cache, 5.0)
    [t] = heard.transitions
    assert (t.model, t.from_state, t.to_state, heard.resync) == ("m", State.RUNNING, State.BACKOFF, False)
    assert slots["m"].container_id is None and cache == {} and runtime.calls == [("inspect", "c-m")]


def test_a_pause_marks_the_cache_and_restarts_the_model() -> None:
    slots = {"m": running("m", "c-m")}
    cache = {"c-m": observed("m", cid="c-m")}
    heard = ContainerEvents(FakeRuntime(), NullMetrics(), FakeProber()).on_event(
        ContainerEvent(ContainerAction.PAUSE, "c-m", "m"), slots, cache, 5.0)
    assert cache["c-m"].status == "paused"
    [t] = heard.transitions
    assert t.reason.startswith("container paused (hung): restart") and t.to_state is State.BACKOFF


def test_a_stopped_container_the_engine_started_is_asked_about_once_and_cached_if_held_at_its_gate() -> None:
    """Standby's arming is an engine start of a stopped container: `status` shows it held at once."""
    from dataclasses import replace

    stopped = replace(observed("m", cid="c-m"), status="exited", exit_code=0)
    runtime = FakeRuntime()
    runtime.containers["c-m"] = replace(stopped, held=True)      # what DockerRuntime says of an armed one
    cache = {"c-m": stopped}
    heard = ContainerEvents(runtime, NullMetrics(), FakeProber()).on_event(
        ContainerEvent(ContainerAction.START, "c-m", "m"), {}, cache, 5.0)
    assert heard == Heard() and cache["c-m"].held and runtime.calls == [("inspect", "c-m")]

    # started by someone else (running to the daemon too): left for the resync, as before
    runtime.containers["c-m"] = replace(stopped, status="running")
    cache = {"c-m": stopped}
    ContainerEvents(runtime, NullMetrics(), FakeProber()).on_event(
        ContainerEvent(ContainerAction.START, "c-m", "m"), {}, cache, 6.0)
    assert cache["c-m"] is stopped

    # a running container's start event (the daemon's own start): no engine call
    runtime.calls.clear()
    cache = {"c-m": replace(stopped, status="running")}
    ContainerEvents(runtime, NullMetrics(), FakeProber()).on_event(
        ContainerEvent(ContainerAction.START, "c-m", "m"), {}, cache, 7.0)
    assert runtime.calls == []


def test_a_server_that_says_it_loaded_is_probed_in_that_pass_and_made_running_by_the_probe() -> None:
    """The process runtime's servers say when they have loaded (ContainerEvent READY): the loop probes at
    once instead of at the next fallback poll (ANNOUNCED_FALLBACK_S), and only the probe's 200 makes it RUNNING."""
    from supervisor.core.events import ProbeResult
    from supervisor.core.lifecycle import ANNOUNCED_FALLBACK_S

    from .test_loop import Harness

    runtime = FakeRuntime()
    runtime.announcing = True
    h = Harness([desired("a")], runtime=runtime)
    h.step()
    cid = h.cid("a")
    assert h.state("a") is State.STARTING and h.sup.slots["a"].lc.announces
    h.clock.advance(ANNOUNCED_FALLBACK_S * 0.9)
    h.step()
    assert h.prober.sent == [], "nothing polled before the fallback's interval"
    h.step(ContainerEvent(ContainerAction.READY, "someone-else", "a"))
    assert h.prober.sent == [], "the word of another container of the model is not this one's"
    h.step(ContainerEvent(ContainerAction.READY, cid, "a"))
    assert h.prober.sent == [("a", cid)], "probed in the pass that heard it"
    assert h.state("a") is State.STARTING, "the word alone does not make it RUNNING"
    h.step(ProbeResult("a", cid, ProbeOutcome.OK, 0.002))
    assert h.state("a") is State.RUNNING


def test_a_container_runtime_is_polled_as_before() -> None:
    from .test_loop import Harness

    h = Harness([desired("a")])
    h.step()
    assert not h.sup.slots["a"].lc.announces
    h.clock.advance(0.05)
    h.step()
    assert h.prober.sent == [("a", h.cid("a"))], "the 5 % rule's first probe at 20 ms"
