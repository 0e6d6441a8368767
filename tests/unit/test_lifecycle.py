"""The per-model state machine against a fake clock: exact backoff, FATAL, resets."""

from __future__ import annotations

import random

import pytest

from supervisor.core.lifecycle import Lifecycle, ProbeOutcome, State
from supervisor.core.spec import HealthPolicy, RestartPolicy, RestartSettings

from .fakes import FakeClock




def make(*, jitter: float = 0.0, max_failures: int = 5, policy: RestartPolicy = RestartPolicy.ALWAYS,
         start_timeout: float = 60.0) -> Lifecycle:
    return Lifecycle(
        "m",
        health=HealthPolicy(interval_s=2, timeout_s=2, failures=3, start_timeout_s=start_timeout),
        restart=RestartSettings(policy=policy, max_failures=max_failures),
        rng=random.Random(7),
        jitter=jitter,
    )


def fail_start(lc: Lifecycle, clock: FakeClock) -> None:
    lc.start_attempt(clock())
    lc.container_started(clock())
    lc.container_exited(clock.advance(0.1), exit_code=1, log_tail="boom")


def test_start_then_healthy_is_running() -> None:
    lc, clock = make(), FakeClock()
    assert lc.wants_running(clock())
    t = lc.start_attempt(clock())
    assert t is not None and (t.from_state, t.to_state) == (State.STOPPED, State.STARTING)
    lc.container_started(clock())
    t = lc.probe(clock.advance(1), ProbeOutcome.OK)
    assert t is not None and t.to_state is State.RUNNING
    assert lc.uptime(clock.advance(5)) == pytest.approx(5)


def test_exact_backoff_sequence_capped_at_60() -> None:
    lc, clock = make(max_failures=100), FakeClock()
    delays = []
    for _ in range(9):
        if lc.state is State.BACKOFF:
            assert not lc.wants_running(clock())
            assert lc.next_deadline() == lc.backoff_until
            clock.now = lc.backoff_until  # type: ignore[assignment]
            assert lc.wants_running(clock())
        fail_start(lc, clock)
        assert lc.state is State.BACKOFF
        delays.append(lc.backoff_s)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_jitter_is_bounded() -> None:
    lc = make(jitter=0.1, max_failures=100)
    for n in range(1, 12):
        base = min(2.0 ** (n - 1), 60.0)
        for _ in range(50):
            d = lc.backoff_delay(n)
            assert base * 0.9 <= d <= min(base * 1.1, 60.0)


def test_fatal_after_max_failures_keeps_reason() -> None:
    lc, clock = make(max_failures=3), FakeClock()
    for _ in range(3):
        if lc.state is State.BACKOFF:
            clock.now = lc.backoff_until  # type: ignore[assignment]
        lc.start_attempt(clock())
        lc.container_exited(clock.advance(0.1), exit_code=137, oom_killed=True, log_tail="ggml alloc failed")
    assert lc.state is State.FATAL
    assert "OOMKilled" in lc.reason and "ggml alloc failed" in lc.reason and "3 consecutive" in lc.reason
    assert not lc.wants_running(clock.advance(3600))
    assert lc.next_deadline() is None
    # only an explicit start (or a manifest change) leaves FATAL
    t = lc.start_requested(clock())
    assert t is not None and t.to_state is State.STOPPED and lc.consecutive_failures == 0
    assert lc.wants_running(clock())


def test_manifest_change_leaves_fatal() -> None:
    lc, clock = make(max_failures=1), FakeClock()
    fail_start(lc, clock)
    assert lc.state is State.FATAL
    t = lc.config_changed(clock(), health=lc.health, restart=lc.restart)
    assert t is not None and t.to_state is State.STOPPED and lc.wants_running(clock())


def test_crash_after_stable_run_restarts_at_once_without_counting() -> None:
    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    lc.probe(clock.advance(1), ProbeOutcome.OK)
    clock.advance(lc.restart.stable_after_s + 1)
    t = lc.container_exited(clock(), exit_code=137)
    assert t is not None and t.to_state is State.EXITED
    assert lc.wants_running(clock()) and lc.consecutive_failures == 0


def test_crash_soon_after_healthy_backs_off() -> None:
    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    lc.probe(clock.advance(1), ProbeOutcome.OK)
    t = lc.container_exited(clock.advance(2), exit_code=139)
    assert t is not None and t.to_state is State.BACKOFF and lc.consecutive_failures == 1
    assert not lc.wants_running(clock())


def test_backoff_resets_after_ten_minutes_healthy() -> None:
    lc, clock = make(), FakeClock()
    fail_start(lc, clock)
    clock.now = lc.backoff_until  # type: ignore[assignment]
    fail_start(lc, clock)
    assert lc.consecutive_failures == 2
    clock.now = lc.backoff_until  # type: ignore[assignment]
    lc.start_attempt(clock())
    lc.probe(clock.advance(1), ProbeOutcome.OK)
    assert lc.next_deadline() is not None
    lc.tick(clock.advance(599))
    assert lc.consecutive_failures == 2
    lc.tick(clock.advance(1))
    assert lc.consecutive_failures == 0
    # the next quick crash backs off from 1 s again
    lc.start_attempt(clock())
    lc.probe(clock.advance(1), ProbeOutcome.OK)
    lc.container_exited(clock.advance(1), exit_code=1)
    assert lc.backoff_s == 1


def test_loading_is_progress_until_start_timeout() -> None:
    lc, clock = make(start_timeout=30), FakeClock()
    lc.start_attempt(clock())
    for _ in range(29):
        assert lc.probe(clock.advance(1), ProbeOutcome.LOADING) is None
        assert lc.state is State.STARTING
    assert lc.next_deadline() is not None
    t = lc.probe(clock.advance(1), ProbeOutcome.LOADING)
    assert t is not None and t.to_state is State.BACKOFF and "not healthy after 30s" in t.reason


def test_start_timeout_via_tick() -> None:
    lc, clock = make(start_timeout=10), FakeClock()
    lc.start_attempt(clock())
    assert lc.tick(clock.advance(9.9)) is None
    t = lc.tick(clock.advance(0.1))
    assert t is not None and t.to_state is State.BACKOFF


def test_health_failures_restart_after_threshold() -> None:
    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    lc.probe(clock.advance(1), ProbeOutcome.OK)
    clock.advance(100)
    assert lc.probe(clock.advance(2), ProbeOutcome.FAILED, "timeout") is None
    assert lc.probe(clock.advance(2), ProbeOutcome.FAILED, "timeout") is None
    t = lc.probe(clock.advance(2), ProbeOutcome.FAILED, "timeout")
    assert t is not None and t.to_state is State.EXITED and "health check failed 3x" in t.reason
    assert lc.wants_running(clock()) and not lc.live


def test_paused_while_running_restarts() -> None:
    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    lc.probe(clock.advance(1), ProbeOutcome.OK)
    t = lc.hung(clock.advance(60), "container paused")
    assert t is not None and t.to_state is State.EXITED and lc.wants_running(clock())


def test_stop_and_restart_requests() -> None:
    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    lc.probe(clock.advance(1), ProbeOutcome.OK)
    assert lc.stop_requested(clock()).to_state is State.STOPPING  # type: ignore[union-attr]
    assert not lc.wants_running(clock())
    assert lc.container_exited(clock(), exit_code=0).to_state is State.STOPPED  # type: ignore[union-attr]
    assert not lc.wants_running(clock())
    lc.start_requested(clock())
    assert lc.wants_running(clock())
    lc.start_attempt(clock())
    lc.stop_requested(clock(), disable=False)
    lc.stopped(clock())
    assert lc.state is State.STOPPED and lc.wants_running(clock()) and lc.restarts == 1


def test_policy_never_and_on_failure() -> None:
    lc, clock = make(policy=RestartPolicy.NEVER), FakeClock()
    fail_start(lc, clock)
    assert lc.state is State.EXITED and not lc.wants_running(clock())
    lc, clock = make(policy=RestartPolicy.ON_FAILURE), FakeClock()
    lc.start_attempt(clock())
    lc.probe(clock.advance(1), ProbeOutcome.OK)
    lc.container_exited(clock.advance(100), exit_code=0)
    assert lc.state is State.EXITED and not lc.wants_running(clock())


def test_verification_failure_is_fatal_at_once() -> None:
    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    t = lc.start_failed(clock(), "model file sha256 mismatch", permanent=True)
    assert t is not None and t.to_state is State.FATAL and "sha256" in lc.reason
    lc2 = make()
    lc2.start_attempt(clock())
    assert lc2.start_failed(clock(), "docker: 500", permanent=False).to_state is State.BACKOFF  # type: ignore[union-attr]


def test_adopt() -> None:
    lc, clock = make(), FakeClock()
    t = lc.adopt(clock())
    assert t is not None and t.to_state is State.STARTING and lc.probe_due(clock())
    lc.probe(clock(), ProbeOutcome.OK)
    assert lc.state is State.RUNNING and lc.restarts == 0


def _probes_until_healthy(load_s: float, *, interval_s: float = 2.0, lc: Lifecycle | None = None,
                          clock: FakeClock | None = None) -> tuple[float, int]:
    """Drive a start the way the loop does (probe when due, answer LOADING until `load_s` after the
    container started, then OK): when RUNNING came, and how many probes it took. With `lc`, that
    lifecycle (stopped first) starts again: what it learnt from its earlier loads counts."""
    if lc is None:
        lc = Lifecycle("m", health=HealthPolicy(interval_s=interval_s, timeout_s=2, failures=3, start_timeout_s=600),
                       restart=RestartSettings(), rng=random.Random(7))
    clock = clock or FakeClock(100.0)
    if lc.state is not State.STOPPED:
        lc.stop_requested(clock())
        lc.stopped(clock())
    clock.now += 5.0
    lc.start_attempt(clock())
    lc.container_started(clock())
    started, probes = clock(), 0
    while lc.state is State.STARTING:
        assert lc.next_probe_at is not None
        clock.now = lc.next_probe_at
        lc.probe_sent(clock())
        probes += 1
        lc.probe(clock(), ProbeOutcome.OK if clock() - started >= load_s else ProbeOutcome.LOADING)
    return clock() - started, probes


def _learnt(loads: list[float], interval_s: float = 2.0) -> tuple[Lifecycle, FakeClock]:
    """A lifecycle that has loaded `loads` (seconds each), in that order."""
    lc = Lifecycle("m", health=HealthPolicy(interval_s=interval_s, timeout_s=2, failures=3, start_timeout_s=600),
                   restart=RestartSettings(), rng=random.Random(7))
    clock = FakeClock(100.0)
    for load in loads:
        _probes_until_healthy(load, lc=lc, clock=clock)
    return lc, clock


@pytest.mark.parametrize("load_s", [0.0, 0.3, 0.97, 1.0, 1.21, 1.4, 2.5, 7.3, 30.0])
def test_a_starting_model_is_seen_healthy_within_five_percent_of_its_load_time(load_s: float) -> None:
    """Issue 17: a fixed 0.5 s probe while STARTING cost a 1 s load 0.25 s on average (0.5 s at worst)."""
    from supervisor.core.lifecycle import STARTING_PROBE_MAX_S, STARTING_PROBE_MIN_S

    seen, _ = _probes_until_healthy(load_s)
    late = seen - load_s
    assert 0.0 <= late <= max(STARTING_PROBE_MIN_S, 0.05 * load_s) + 1e-9
    assert late <= STARTING_PROBE_MAX_S


def test_the_starting_probes_back_off_so_a_long_load_costs_few_probes() -> None:
    _, short = _probes_until_healthy(1.0)
    _, long = _probes_until_healthy(120.0)
    assert short <= 40                  # ~30 probes for a 1 s start
    assert long <= 40 + 20 * 60 + 240   # then 20/s at most, 2/s after 10 s: 0.5 s apart
    seen, _ = _probes_until_healthy(120.0)
    assert seen - 120.0 <= 0.5 + 1e-9


def test_a_model_that_loaded_before_is_seen_healthy_within_one_fast_probe_of_its_usual_load() -> None:
    """Issue 17: the 5 % rule saw a 2 s load ~0.05 s late on average (0.1 s at worst). Around the time its
    earlier loads took, the model is probed every 20 ms."""
    from supervisor.core.lifecycle import STARTING_PROBE_MIN_S

    loads = (1.5, 1.9, 2.1, 2.6)
    late = [_probes_until_healthy(load)[0] - load for load in loads]
    assert sum(late) / len(late) > STARTING_PROBE_MIN_S         # without a history: the 5 % rule (0.04 s)
    lc, clock = _learnt([2.0, 2.3, 1.8])
    assert [round(x, 1) for x in lc.recent_loads] == [2.0, 2.3, 1.8]   # started -> seen healthy, in order
    for load in loads:                                 # anywhere from 0.8x the fastest to 1.25x the slowest
        seen, _ = _probes_until_healthy(load, lc=lc, clock=clock)
        assert 0.0 <= seen - load <= STARTING_PROBE_MIN_S + 1e-9, load


def test_the_learnt_window_costs_few_probes_and_a_slower_load_falls_back_to_the_five_percent_rule() -> None:
    from supervisor.core.lifecycle import LOAD_HISTORY

    _, cold = _probes_until_healthy(2.0)
    lc, clock = _learnt([2.0] * 3)
    _, warm = _probes_until_healthy(2.0, lc=lc, clock=clock)
    assert warm <= cold + 25                           # the window from 1.6 s: 20 probes, fewer before it
    seen, probes = _probes_until_healthy(60.0, lc=lc, clock=clock)   # a cold page cache: far slower than before
    assert seen - 60.0 <= 0.5 + 1e-9 and probes <= warm + 20 * 60    # after the window: 5 %, backing off
    for _ in range(LOAD_HISTORY):
        _probes_until_healthy(2.0, lc=lc, clock=clock)
    assert max(lc.recent_loads) < 3.0                  # the slow load has left the history


@pytest.mark.parametrize("history", [[], [0.5], [2.0, 2.2], [10.0], [1.0, 30.0]])
@pytest.mark.parametrize("load_s", [0.0, 0.3, 1.21, 2.5, 7.3, 30.0])
def test_a_history_makes_a_load_seen_late_only_by_the_coarse_probes_before_its_window(history: list[float],
                                                                                    load_s: float) -> None:
    """Before the window (0.8x the fastest recent load) a model is probed every 0.1 s, not at the 5 % rule's
    20 ms: a load that much faster than usual is seen at most 0.1 s late. From the window on, and without a
    history, no later than the 5 % rule."""
    from supervisor.core.lifecycle import BEFORE_WINDOW_S, EXPECTED_FROM, STARTING_PROBE_MAX_S, STARTING_PROBE_MIN_S

    lc, clock = _learnt(history)
    seen, _ = _probes_until_healthy(load_s, lc=lc, clock=clock)
    rule = min(max(STARTING_PROBE_MIN_S, 0.05 * load_s), STARTING_PROBE_MAX_S)
    early = bool(history) and load_s < EXPECTED_FROM * min(lc.recent_loads[:-1] or history)
    assert 0.0 <= seen - load_s <= (max(rule, BEFORE_WINDOW_S) if early else rule) + 1e-9


def test_before_its_window_a_model_with_a_history_costs_a_probe_per_tenth_of_a_second() -> None:
    """The measured reason (a 2-core host, a 1.5 s load): about 57 probes per start before, 27 after, and
    the daemon's CPU per start 0.165 s -> 0.095 s."""
    lc, clock = _learnt([1.5])                  # the window opens at 1.2 s
    _, probes = _probes_until_healthy(1.5, lc=lc, clock=clock)
    assert probes <= 1.2 / 0.1 + 0.3 / 0.02 + 2   # 12 before the window, 15 in it
    _, fresh = _probes_until_healthy(1.5)
    assert fresh >= 40                          # without a history: the 5 % rule's 20 ms, then 5 %


def test_an_adopted_container_teaches_no_load_time() -> None:
    lc, clock = make(), FakeClock()
    lc.adopt(clock())
    clock.now += 0.5
    lc.probe(clock(), ProbeOutcome.OK)
    assert lc.state is State.RUNNING and lc.recent_loads == ()


def test_a_short_health_interval_is_never_slowed_by_the_starting_schedule() -> None:
    from supervisor.core.lifecycle import starting_probe_interval

    assert starting_probe_interval(60.0, 0.1) == pytest.approx(0.1)
    assert starting_probe_interval(60.0, 2.0) == pytest.approx(0.5)
    assert starting_probe_interval(1.0, 2.0) == pytest.approx(0.05)
    assert starting_probe_interval(0.0, 2.0) == pytest.approx(0.02)
    assert starting_probe_interval(0.0, 0.001) == pytest.approx(0.02)   # never a busy loop
    assert starting_probe_interval(0.3, 0.05, (1.5,)) == pytest.approx(0.05)   # nor by the coarse pre-window
    assert starting_probe_interval(0.3, 2.0, (1.5,)) == pytest.approx(0.1)
    assert starting_probe_interval(1.15, 2.0, (1.5,)) == pytest.approx(0.05)   # no later than the window


def test_loaded_only_after_the_first_healthy_probe_of_a_container_it_started() -> None:
    lc, clock = make(), FakeClock()
    assert lc.loaded                                  # nothing started: nothing loading
    lc.start_attempt(clock())
    lc.container_started(clock())
    assert not lc.loaded
    lc.probe(clock.advance(0.5), ProbeOutcome.LOADING)
    assert not lc.loaded
    lc.stop_requested(clock.advance(0.1))
    assert lc.state is State.STOPPING and not lc.loaded    # stopped mid-load: the planner kills it
    lc.stopped(clock.advance(0.1))
    lc.start_requested(clock())
    lc.start_attempt(clock())
    lc.container_started(clock())
    lc.probe(clock.advance(1), ProbeOutcome.OK)
    assert lc.state is State.RUNNING and lc.loaded
    lc.stop_requested(clock.advance(1))
    assert lc.state is State.STOPPING and lc.loaded        # a graceful stop: it may save its KV cache


def test_an_adopted_container_counts_as_loaded() -> None:
    lc, clock = make(), FakeClock()
    lc.adopt(clock())
    assert lc.state is State.STARTING and lc.loaded


def _announced_start(load_s: float, *, lc: Lifecycle | None = None, clock: FakeClock | None = None,
                     interval_s: float = 2.0, word: bool = True) -> tuple[float, int]:
    """A start whose server says when it has loaded (`word`: it does, at load_s): (seen healthy after, probes)."""
    lc = lc or Lifecycle("m", health=HealthPolicy(interval_s=interval_s, timeout_s=2, failures=3, start_timeout_s=600),
                         restart=RestartSettings(), rng=random.Random(7))
    clock = clock or FakeClock(100.0)
    lc.start_attempt(clock())
    lc.container_started(clock(), announces=True)
    started, probes, said = clock(), 0, False
    while lc.state is State.STARTING:
        assert lc.next_probe_at is not None
        if word and not said and lc.next_probe_at > started + load_s:
            clock.now, said = started + load_s, True
            lc.ready_announced(clock())
            assert lc.next_probe_at == clock(), "probed at once"
            continue
        clock.now = lc.next_probe_at
        lc.probe_sent(clock())
        probes += 1
        lc.probe(clock(), ProbeOutcome.OK if clock() - started >= load_s - 1e-9 else ProbeOutcome.LOADING)
    return clock() - started, probes


@pytest.mark.parametrize("load_s", [0.0, 0.3, 1.5, 7.3])
def test_a_server_that_says_it_loaded_is_probed_then_and_polled_only_as_a_fallback(load_s: float) -> None:
    """The process runtime's servers say when they have loaded (runtime/process/readiness.py): seen at once,
    at about one probe per ANNOUNCED_FALLBACK_S before it (the 5 % rule: ~57 for a 1.5 s load)."""
    from supervisor.core.lifecycle import ANNOUNCED_FALLBACK_S

    seen, probes = _announced_start(load_s)
    assert seen == pytest.approx(load_s)
    assert probes <= load_s / ANNOUNCED_FALLBACK_S + 1
    silent, _ = _announced_start(load_s, word=False)        # the word never comes: the fallback finds it
    assert 0.0 <= silent - load_s <= ANNOUNCED_FALLBACK_S + 1e-9


def test_the_fallback_poll_is_never_slower_than_the_health_interval() -> None:
    _, probes = _announced_start(1.0, interval_s=0.1, word=False)
    assert probes >= 10


def test_after_the_word_a_probe_that_raced_it_is_followed_within_the_fast_interval() -> None:
    """A probe in flight when the word came answers 503 (it was asked before): the next is 20 ms later."""
    from supervisor.core.lifecycle import STARTING_PROBE_MIN_S

    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    lc.container_started(clock(), announces=True)
    lc.probe_sent(clock.advance(0.5))
    lc.ready_announced(clock.advance(0.001))
    lc.probe(clock.advance(0.001), ProbeOutcome.LOADING)
    assert lc.next_probe_at == pytest.approx(clock() + STARTING_PROBE_MIN_S)
    lc.ready_announced(clock())                              # said twice: nothing changes
    assert lc.next_probe_at == pytest.approx(clock() + STARTING_PROBE_MIN_S)


def test_the_word_counts_only_for_the_start_that_announces_it() -> None:
    from supervisor.core.lifecycle import ANNOUNCED_FALLBACK_S

    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    lc.container_started(clock())                            # a container's server: polled, not told
    first = lc.next_probe_at
    lc.ready_announced(clock.advance(0.001))
    assert lc.next_probe_at == first and not lc.announced
    lc.probe(clock.advance(0.01), ProbeOutcome.OK)
    lc.ready_announced(clock())                              # RUNNING: nothing to do
    assert lc.state is State.RUNNING and not lc.announced
    lc.container_exited(clock.advance(100), exit_code=1, log_tail="boom")
    lc.start_attempt(clock())
    assert not lc.announces, "a new start announces only if its container_started says so"
    lc.container_started(clock(), announces=True)
    assert lc.next_probe_at == pytest.approx(clock() + ANNOUNCED_FALLBACK_S)
    lc2, clock2 = make(), FakeClock()
    lc2.adopt(clock2())
    lc2.ready_announced(clock2.advance(0.1))                 # nobody reads an adopted server's word
    assert not lc2.announced
