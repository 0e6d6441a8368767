"""Property test: whatever happens, in any order, no transition leaves the allowed graph."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from supervisor.core.lifecycle import ALLOWED, Lifecycle, ProbeOutcome, State, Transition
from supervisor.core.spec import HealthPolicy, RestartPolicy, RestartSettings


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.lc = Lifecycle(
            "m",
            health=HealthPolicy(interval_s=1, timeout_s=1, failures=2, start_timeout_s=5),
            restart=RestartSettings(max_failures=4, stable_after_s=3, healthy_reset_s=20),
            rng=random.Random(0),
        )
        self.seen: list[Transition] = []

    def _record(self, before: State, t: Transition | None) -> None:
        if t is None:
            assert self.lc.state is before
            return
        assert t.from_state is before and t.to_state is self.lc.state
        assert t.to_state in ALLOWED[t.from_state], t
        assert t.reason
        self.seen.append(t)

    @rule(dt=st.floats(min_value=0, max_value=100))
    def advance(self, dt: float) -> None:
        self.now += dt
        before = self.lc.state
        self._record(before, self.lc.tick(self.now))

    @rule()
    def start_attempt(self) -> None:
        if self.lc.wants_running(self.now) and not self.lc.live:
            before = self.lc.state
            self._record(before, self.lc.start_attempt(self.now))

    @rule(outcome=st.sampled_from(ProbeOutcome))
    def probe(self, outcome: ProbeOutcome) -> None:
        before = self.lc.state
        self._record(before, self.lc.probe(self.now, outcome))

    @rule(code=st.sampled_from([0, 1, 137, None]), oom=st.booleans())
    def exited(self, code: int | None, oom: bool) -> None:
        before = self.lc.state
        self._record(before, self.lc.container_exited(self.now, exit_code=code, oom_killed=oom))

    @rule()
    def hung(self) -> None:
        before = self.lc.state
        self._record(before, self.lc.hung(self.now, "paused"))

    @rule(disable=st.booleans())
    def stop(self, disable: bool) -> None:
        before = self.lc.state
        self._record(before, self.lc.stop_requested(self.now, disable=disable))

    @rule()
    def stopped(self) -> None:
        before = self.lc.state
        self._record(before, self.lc.stopped(self.now))

    @rule()
    def start(self) -> None:
        before = self.lc.state
        self._record(before, self.lc.start_requested(self.now))

    @rule(permanent=st.booleans())
    def start_failed(self, permanent: bool) -> None:
        before = self.lc.state
        self._record(before, self.lc.start_failed(self.now, "verify", permanent=permanent))

    @rule(policy=st.sampled_from(RestartPolicy))
    def config_changed(self, policy: RestartPolicy) -> None:
        before = self.lc.state
        self._record(before, self.lc.config_changed(
            self.now, health=self.lc.health, restart=RestartSettings(policy=policy, max_failures=4)))

    @rule(timeout=st.floats(min_value=0, max_value=30))
    def drain(self, timeout: float) -> None:
        before = self.lc.state
        self._record(before, self.lc.drain(self.now, until=self.now + timeout, inflight=1))

    @rule()
    def resume(self) -> None:
        before = self.lc.state
        self._record(before, self.lc.resume(self.now))

    @rule()
    def recreate_drained(self) -> None:
        if self.lc.state is State.DRAINING:
            before = self.lc.state
            self._record(before, self.lc.start_attempt(self.now))

    @rule()
    def adopt(self) -> None:
        before = self.lc.state
        self._record(before, self.lc.adopt(self.now))

    @invariant()
    def consistent(self) -> None:
        lc = self.lc
        if lc.state is State.BACKOFF:
            assert 0 < lc.consecutive_failures < lc.restart.max_failures
        if lc.state is State.FATAL:
            assert not lc.wants_running(self.now)
        if lc.state is State.BACKOFF:
            assert lc.backoff_until is not None
            assert lc.backoff_s is not None and lc.backoff_s <= lc.restart.backoff_max_s
        dl = lc.next_deadline()
        if lc.state is State.STARTING:
            assert dl is not None and dl <= lc.since + lc.health.start_timeout_s
        if lc.state is State.DRAINING:
            assert lc.drain_until is not None and dl is not None and dl <= lc.drain_until
            assert lc.wants_running(self.now) and lc.live and lc.next_probe_at is None
        else:
            assert lc.drain_until is None


TestLifecycleGraph = LifecycleMachine.TestCase
TestLifecycleGraph.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
