"""Lifecycle traces: every field after every step of a few scripted histories, compared whole.

Written for the mutants `make mutate` found alive in supervisor/core/lifecycle.py (docs/TESTING.md):
the existing tests check states and a few reasons; these also pin `since`, the counters, the deadlines,
the exact reasons and what `wants_running` answers, so a transition stamped at the wrong time, a
deadline left behind or a policy branch taken wrongly shows as a changed line. The traces live in
tests/golden/lifecycle/<history>.txt, one line per step; `UPDATE_GOLDEN=1` rewrites them (read the diff:
each changed line is a behaviour change).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.core.lifecycle import Lifecycle, ProbeOutcome, Transition
from supervisor.core.spec import HealthPolicy, RestartPolicy, RestartSettings

OK, LOADING, FAILED = ProbeOutcome.OK, ProbeOutcome.LOADING, ProbeOutcome.FAILED
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "lifecycle"
HEALTH = HealthPolicy(interval_s=2.0, timeout_s=1.0, failures=2, start_timeout_s=30.0)


def snap(lc: Lifecycle, t: Transition | None, now: float) -> str:
    moved = "-" if t is None else f"{t.from_state.name}->{t.to_state.name} {t.reason!r}"
    return (f"{now:g}: {moved} | {lc.state.name} since={lc.since:g} reason={lc.reason!r} enabled={lc.enabled}"
            f" restarts={lc.restarts} fails={lc.consecutive_failures} probes={lc.probe_failures}"
            f" exit={lc.last_exit_code!r} running_since={lc.running_since!r} backoff_until={lc.backoff_until!r}"
            f" backoff_s={lc.backoff_s!r} next_probe={lc.next_probe_at!r} deadline={lc.next_deadline()!r}"
            f" wants={lc.wants_running(now)} due={lc.probe_due(now)} uptime={lc.uptime(now)!r} live={lc.live}")


def trace(restart: RestartSettings, steps: list[tuple[float, Callable[[Lifecycle, float], Transition | None]]],
          *, jitter: float = 0.0) -> list[str]:
    lc = Lifecycle("m", health=HEALTH, restart=restart, rng=random.Random(7), jitter=jitter)
    out = [snap(lc, None, 0.0)]
    for now, step in steps:
        out.append(snap(lc, step(lc, now), now))
    return out


def probe(outcome: ProbeOutcome, detail: str | None = None) -> Callable[[Lifecycle, float], Transition | None]:
    if detail is None:                                  # as the loop calls it: the default detail
        return lambda lc, now: lc.probe(now, outcome)
    return lambda lc, now: lc.probe(now, outcome, detail)


def exited(code: int | None, *, oom: bool | None = None, log: str | None = None
           ) -> Callable[[Lifecycle, float], Transition | None]:
    """container_exited, leaving out what is not given (the defaults are part of the contract too)."""
    kw: dict[str, object] = {}
    if oom is not None:
        kw["oom_killed"] = oom
    if log is not None:
        kw["log_tail"] = log
    return lambda lc, now: lc.container_exited(now, exit_code=code, **kw)  # type: ignore[arg-type]


def start(lc: Lifecycle, now: float) -> Transition | None:
    return lc.start_attempt(now)


def started(lc: Lifecycle, now: float) -> None:
    lc.container_started(now)


def sent(lc: Lifecycle, now: float) -> None:
    lc.probe_sent(now)


def tick(lc: Lifecycle, now: float) -> Transition | None:
    return lc.tick(now)


def hung(lc: Lifecycle, now: float) -> Transition | None:
    return lc.hung(now, "paused")


def config_changed(lc: Lifecycle, now: float) -> Transition | None:
    return lc.config_changed(now, health=HEALTH, restart=lc.restart)


Steps = list[tuple[float, Callable[[Lifecycle, float], Transition | None]]]
HISTORIES: dict[str, tuple[RestartSettings, Steps, float]] = {
    # probes while loading, healthy, two failed probes soon after: backoff (jittered), a crash, FATAL
    "always_crash_loop": (RestartSettings(max_failures=3, healthy_reset_s=100.0, stable_after_s=10.0), [
        (1, start), (1.2, started), (1.7, probe(LOADING)), (2.0, sent), (2.2, probe(OK)),
        (4.2, probe(FAILED, "503")), (6.2, probe(FAILED)), (6.5, tick), (7.5, start), (8.0, probe(OK)),
        (9.0, exited(137, log="  ggml: boom \n")), (12.0, start), (13.0, hung),
    ], 0.1),
    # healthy_reset_s and stable_after_s at their boundaries (>=)
    "stable_then_reset": (RestartSettings(max_failures=3, healthy_reset_s=100.0, stable_after_s=10.0), [
        (0, start), (1, probe(OK)), (2, exited(1)), (5, start), (6, probe(OK)), (105.9, tick), (106, tick),
        (116, exited(1)), (116, start), (117, probe(OK)), (127, exited(1)),
    ], 0.0),
    # on-failure: a clean exit is not restarted, an OOM kill with code 0 is
    "on_failure": (RestartSettings(policy=RestartPolicy.ON_FAILURE, max_failures=5), [
        (0, start), (1, exited(0)), (2, lambda lc, now: lc.start_requested(now)), (3, start),
        (4, exited(0, oom=True)), (10, start), (11, probe(OK)), (12, exited(0)), (13, config_changed),
    ], 0.0),
    "never": (RestartSettings(policy=RestartPolicy.NEVER), [
        (0, start), (1, probe(OK)), (50, exited(2)), (51, lambda lc, now: lc.stop_requested(now)),
    ], 0.0),
    # adopted, stopped for a recreate, start timeout, a runtime error to FATAL, start, a permanent error
    "adopt_stop_fatal": (RestartSettings(max_failures=2), [
        (5, lambda lc, now: lc.adopt(now)), (5.5, probe(OK)),
        (6, lambda lc, now: lc.stop_requested(now, disable=False, reason="recreate")),
        (7, lambda lc, now: lc.stopped(now)), (8, start), (38, tick), (40, start),
        (41, lambda lc, now: lc.start_failed(now, "engine gone", permanent=False)),
        (42, lambda lc, now: lc.start_requested(now)), (43, start),
        (44, lambda lc, now: lc.start_failed(now, "sha256 differs", permanent=True)), (45, config_changed),
    ], 0.0),
    # healthy_reset_s shorter than the probe interval: its deadline shows; a failed probe then a good one;
    # a recreate while starting; a hang while running; a stop that ends by the container's exit
    "short_reset": (RestartSettings(max_failures=4, healthy_reset_s=1.0, stable_after_s=10.0), [
        (0, start), (0.3, start), (1, probe(OK)), (2, exited(9)), (4, start), (5, probe(OK)),
        (7, probe(FAILED)), (9, probe(OK)), (10, hung), (12, start), (13, probe(OK)),
        (14, lambda lc, now: lc.stop_requested(now)), (15, exited(143)),
    ], 0.0),
    "restore": (RestartSettings(), [
        (1, lambda lc, now: lc.restore(now, failures=3, fatal_reason=None)),
        (2, lambda lc, now: lc.restore(now, failures=-1, fatal_reason="was FATAL")),
    ], 0.0),
}


@pytest.mark.parametrize("name", sorted(HISTORIES))
def test_lifecycle_history_matches_its_trace(name: str) -> None:
    restart, steps, jitter = HISTORIES[name]
    text = "\n".join(trace(restart, steps, jitter=jitter)) + "\n"
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text.splitlines() == golden.read_text().splitlines(), f"{golden} (UPDATE_GOLDEN=1 rewrites it)"
