"""What the status snapshot says of a model's checks and failures (the console's cards show it): what was
verified before its container was created, its failed starts toward FATAL and the backoff time left."""

from __future__ import annotations

from supervisor.core.events import ContainerAction, ContainerEvent
from supervisor.core.lifecycle import State
from supervisor.core.spec import RestartSettings
from supervisor.core.status import ModelStatus

from .fakes import FakeRuntime
from .helpers import desired, observed
from .test_loop import Harness


def status_of(h: Harness, model: str) -> ModelStatus:
    return next(m for m in h.sup.snapshot() if m.name == model)


def test_a_container_this_daemon_created_says_what_was_checked_and_an_adopted_one_says_it_was_not() -> None:
    a, b = desired("a"), desired("b", port=18082)
    rt = FakeRuntime()
    rt.add(observed(b, cid="made-before"))
    h = Harness([a, b], runtime=rt)
    h.step()
    assert h.verifier.checked == ["a"]
    assert status_of(h, "a").verified == ("model file SHA-256 aaaaaaaaaaaa and image 111111111111 checked before"
                                          " this container was created")
    assert status_of(h, "b").verified.startswith("not checked by this daemon: the container was adopted")


def test_a_model_in_backoff_shows_its_failed_starts_and_the_time_to_its_retry() -> None:
    h = Harness([desired("a", restart=RestartSettings(max_failures=3))])
    h.step()
    cid = h.cid("a")
    h.runtime.crash(cid, 1)
    h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=1))
    assert h.state("a") is State.BACKOFF
    delay = h.sup.slots["a"].lc.backoff_s
    assert delay is not None
    h.clock.advance(0.25)
    h.step()
    s = status_of(h, "a")
    assert (s.failures, s.max_failures) == (1, 3)
    assert s.retry_in_s is not None and abs(s.retry_in_s - (delay - 0.25)) < 1e-6
    h.clock.advance(delay)
    h.step()
    assert status_of(h, "a").retry_in_s is None, "starting again: no backoff left"
