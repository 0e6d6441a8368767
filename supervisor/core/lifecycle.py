"""The per-model state machine: supervisord's states, a monotonic clock, restart backoff.

Over 450 lines on purpose: one state machine. Its states, the ALLOWED table every change is
checked against and the transitions that use it belong in one file, read together; split, each
half could not be checked against the table without the other.

A `Lifecycle` is told what happened (`container_started`, `probe`, `container_exited`,
`hung`, `stop_requested`, ...) with the time `now` from a monotonic clock the caller
owns, and answers with the `Transition` it made (or None). It never does I/O: the
loop asks `wants_running(now)` and `next_deadline()` and lets the planner act.

    STOPPED ──start──> STARTING ──healthy──> RUNNING ──crash after stable_after_s──> EXITED ──start──> STARTING
                          │                     │
                          └──exit / timeout─────┴──crash soon after start──> BACKOFF ──delay──> STARTING
                                                                               │
                                        max_failures consecutive failures ──> FATAL (start / manifest change)

    RUNNING ──manifest changed──> DRAINING ──nothing in flight, or the drain deadline──> STARTING (recreated)
                                     └──changed back──> RUNNING

Start-first (the loop decides it is possible): a RUNNING model stays RUNNING while its new container
starts beside the old one (`handing_over` only sets the reason); when the new one is healthy the
route moves to it (`handed_over`: probes, failures and uptime start over for it). If it fails, the
change falls back to the stop-first path below.

DRAINING: the container of the old config still serves the requests it has; the gateway sends it
no new one (they wait for the new container). The loop decides when the drain is over (`drain_until`,
the requests in flight), the planner then recreates.

What the daemon itself could not do is never the model's failure: an inconclusive probe
(the daemon is out of descriptors) neither counts toward `health.failures` nor lets the
start budget expire, and a start the daemon could not make (`start_deferred`: the engine
unreachable, EMFILE) waits in BACKOFF (DAEMON_SIDE_FIRST_RETRY_S, doubling up to DAEMON_SIDE_RETRY_S)
without adding to the failures or to the restarts.

Every state change goes through `_to()`, which checks it against `ALLOWED`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum
from typing import assert_never

from supervisor.core.spec import HealthPolicy, RestartPolicy, RestartSettings


class State(Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    DRAINING = "DRAINING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class ProbeOutcome(Enum):
    OK = "ok"              # 200 from /health
    LOADING = "loading"    # 503 "Loading model": progress while STARTING
    FAILED = "failed"      # anything else, refused, timed out
    INCONCLUSIVE = "inconclusive"   # the daemon could not probe (EMFILE...): neither a success nor a failure


S = State
ALLOWED: dict[State, frozenset[State]] = {
    S.STOPPED: frozenset({S.STARTING, S.FATAL}),   # -> FATAL: restored from the state file at daemon start
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED, S.STOPPING}),
    S.RUNNING: frozenset({S.STARTING, S.BACKOFF, S.FATAL, S.EXITED, S.STOPPING, S.DRAINING}),
    S.DRAINING: frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.EXITED: frozenset({S.STARTING, S.STOPPED}),
    S.FATAL: frozenset({S.STOPPED}),
}

# States in which the model's container is believed to be the live, wanted one.
LIVE = frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.DRAINING})

# While a model starts it is probed at 5 % of the time its start has taken so far: 20 ms at first,
# backing off to 0.5 s (never slower than its health interval). Seeing it healthy then costs at most
# ~5 % of its load time (issue 17: a fixed 0.5 s cost a 1 s start a quarter of a second on average).
# A model that has loaded before is expected to load about as long again: around then it is probed every
# 20 ms (from 0.8x its fastest recent load to 1.25x its slowest), so a 2 s load is seen ~0.01 s after its
# first 200 instead of ~0.05 s, and a long load still costs few probes outside that window.
# Before the window opens it is probed every 0.1 s: the 5 % rule's 20 ms there were most of a start's
# probes (about 40 of 57 for a 1.5 s load) and of the daemon's CPU during the load (0.14 s per start: a
# probe cost the prober's thread 1.5 ms and the loop 1 ms on a 2-core host). A load faster than 0.8x the
# fastest recent one is then seen at most 0.1 s late.
STARTING_PROBE_MIN_S = 0.02
STARTING_PROBE_MAX_S = 0.5
STARTING_PROBE_FRACTION = 0.05
BEFORE_WINDOW_S = 0.1             # the probe interval of a model with a history, before its window opens
EXPECTED_FROM = 0.8               # the dense window opens at this fraction of the fastest recent load
EXPECTED_UNTIL = 1.25             # ... and closes at this multiple of the slowest
LOAD_HISTORY = 5                  # the recent loads remembered per model
# A start whose server says when it has loaded (`announces`: the process runtime's, runtime/process/
# readiness.py) is probed once at that moment; until then only every ANNOUNCED_FALLBACK_S (never slower
# than its health interval), in case the word never comes.
ANNOUNCED_FALLBACK_S = STARTING_PROBE_MAX_S
DAEMON_SIDE_RETRY_S = 5.0         # a start the daemon could not make is tried again after at most this
DAEMON_SIDE_FIRST_RETRY_S = 0.5   # ... first after this, doubling (a request may be waiting for the model)


def starting_probe_interval(elapsed_s: float, interval_s: float, recent: tuple[float, ...] = ()) -> float:
    """The wait before the next probe of a model whose start has taken `elapsed_s` so far; `recent`: how
    long its last loads took (started -> seen healthy), if any."""
    floor = max(STARTING_PROBE_MIN_S, interval_s)
    elapsed_s = max(0.0, elapsed_s)
    wait = min(max(STARTING_PROBE_MIN_S, STARTING_PROBE_FRACTION * elapsed_s), STARTING_PROBE_MAX_S, floor)
    if recent:
        opens, closes = EXPECTED_FROM * min(recent), EXPECTED_UNTIL * max(recent)
        if opens <= elapsed_s <= closes:
            return STARTING_PROBE_MIN_S
        if elapsed_s < opens:           # coarse, and the next probe no later than the window's opening
            coarse = min(max(wait, BEFORE_WINDOW_S), floor)
            return max(STARTING_PROBE_MIN_S, min(coarse, opens - elapsed_s))
    return wait


class TransitionError(AssertionError):
    """A transition outside ALLOWED: a bug in this module, never an operator error."""


@dataclass(frozen=True)
class Transition:
    model: str
    from_state: State
    to_state: State
    reason: str


class Lifecycle:
    """One model's state, counters and deadlines. Not thread-safe: the loop thread owns it."""

    def __init__(
        self,
        model: str,
        *,
        health: HealthPolicy,
        restart: RestartSettings,
        rng: random.Random,
        jitter: float = 0.1,
        enabled: bool = True,
    ) -> None:
        self.model = model
        self.health = health
        self.restart = restart
        self._rng = rng
        self._jitter = jitter
        self.enabled = enabled                 # the operator wants it up (stop disables, start enables)
        self.state = State.STOPPED
        self.reason = "not started yet"
        self.since = 0.0                       # when the current state was entered
        self.restarts = 0                      # container (re)starts after the first
        self.consecutive_failures = 0
        self.probe_failures = 0                # consecutive failed liveness probes while RUNNING
        self.probe_inconclusive = False        # the last probe could not be made (daemon-side): no verdict yet
        self.last_exit_code: int | None = None
        self.running_since: float | None = None
        self.backoff_until: float | None = None
        self.backoff_s: float | None = None
        self.next_probe_at: float | None = None
        self.drain_until: float | None = None  # DRAINING: the old container is stopped at the latest then
        self.started_at = 0.0                  # when the container was last started (the probes back off from it)
        self.deferred = False                  # in BACKOFF because the daemon could not make the start
        self._deferrals = 0                    # consecutive deferred starts (their retry doubles)
        self._started_once = False
        self._counted_restart = False          # the last start_attempt added to `restarts`
        self._loading = False                  # started by start_attempt, no /health 200 since
        self.recent_loads: tuple[float, ...] = ()   # the last LOAD_HISTORY starts' started -> healthy, seconds
        self.announces = False                 # this start's server will say when it has loaded
        self.announced = False                 # ... and it has said so

    # --- queries ------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """The container, if running, is the one this lifecycle started or adopted."""
        return self.state in LIVE

    @property
    def loaded(self) -> bool:
        """False while the container this lifecycle started has not answered /health 200 yet: a stop then
        finds llama-server still loading (planner.LOADING). An adopted or foreign container counts as loaded."""
        return not (self._loading and self.state in (State.STARTING, State.STOPPING))

    def wants_running(self, now: float) -> bool:
        match self.state:
            case State.STARTING | State.RUNNING | State.DRAINING:
                return True
            case State.STOPPED:
                return self.enabled
            case State.BACKOFF:
                return self.enabled and self.backoff_until is not None and now >= self.backoff_until
            case State.EXITED:
                return self.enabled and self._restart_after_exit()
            case State.STOPPING | State.FATAL:
                return False
            case _:
                assert_never(self.state)

    def next_deadline(self) -> float | None:
        """The earliest time at which `tick` or `wants_running` may answer differently."""
        candidates: list[float] = []
        match self.state:
            case State.STARTING:
                if not self.probe_inconclusive:   # else the next conclusive probe decides (next_probe_at)
                    candidates.append(self.since + self.health.start_timeout_s)
            case State.BACKOFF:
                if self.backoff_until is not None:
                    candidates.append(self.backoff_until)
            case State.RUNNING:
                if self.consecutive_failures and self.running_since is not None:
                    candidates.append(self.running_since + self.restart.healthy_reset_s)
            case State.DRAINING:
                if self.drain_until is not None:
                    candidates.append(self.drain_until)
            case State.STOPPED | State.STOPPING | State.EXITED | State.FATAL:
                pass
            case _:
                assert_never(self.state)
        if self.next_probe_at is not None:
            candidates.append(self.next_probe_at)
        return min(candidates) if candidates else None

    def probe_due(self, now: float) -> bool:
        return self.next_probe_at is not None and now >= self.next_probe_at

    def probe_sent(self, now: float) -> None:
        """A probe is in flight; if its result never comes, the next one is due after this."""
        self.next_probe_at = now + self.health.timeout_s + self.health.interval_s

    def probe_busy(self, now: float) -> None:
        """A probe was due but one (maybe of its previous container) is still in flight: try again shortly."""
        self.next_probe_at = now + STARTING_PROBE_MIN_S

    def uptime(self, now: float) -> float | None:
        return now - self.running_since if self.running_since is not None and self.state is State.RUNNING else None

    # --- what happened --------------------------------------------------------------------

    def start_attempt(self, now: float, *, reason: str = "starting") -> Transition | None:
        """The executor is about to create or start the container."""
        self._counted_restart = self._started_once
        if self._started_once:
            self.restarts += 1
        self._started_once = True
        self._loading = True
        self.deferred = False
        self.enabled = True
        self.probe_failures = 0
        self.probe_inconclusive = False
        self.running_since = None
        self.backoff_until = None
        self.announces = False            # until container_started says otherwise
        match self.state:
            case State.STARTING:
                self.since = now          # a recreate while starting: the start budget begins again
                self._probe_from(now)
                return None
            case State.STOPPED | State.EXITED | State.BACKOFF | State.RUNNING | State.DRAINING:
                # STOPPED -> STARTING, EXITED -> STARTING, BACKOFF -> STARTING, RUNNING -> STARTING (recreate),
                # DRAINING -> STARTING (recreate, drained)
                self.drain_until = None
                t = self._to(now, State.STARTING, reason)
                self._probe_from(now)
                return t
            case State.STOPPING | State.FATAL:
                raise TransitionError(f"{self.model}: start attempted in {self.state.name}")
            case _:
                assert_never(self.state)

    def container_started(self, now: float, *, announces: bool = False) -> None:
        """The container is up (created and started, or started in place); probing begins. `announces`: its
        server will say when it has loaded (`ready_announced`), so it is polled only as a fallback."""
        self.announces = announces
        self._probe_from(now)
        self._deferrals = 0

    def _probe_from(self, now: float) -> None:
        """Probing of a start begins now: the first probe soon, the next ones backing off from here."""
        self.started_at = now
        self.announced = False
        self.next_probe_at = now + self._starting_wait(0.0)

    def _starting_wait(self, elapsed_s: float) -> float:
        """The wait before the next probe of this start, `elapsed_s` into it."""
        if self.announced:
            return STARTING_PROBE_MIN_S
        if self.announces:
            return min(ANNOUNCED_FALLBACK_S, max(STARTING_PROBE_MIN_S, self.health.interval_s))
        return starting_probe_interval(elapsed_s, self.health.interval_s, self.recent_loads)

    def ready_announced(self, now: float) -> None:
        """The starting server said it has loaded: probe it now (then every STARTING_PROBE_MIN_S until a 200)."""
        if self.state is not State.STARTING or not self.announces or self.announced:
            return
        self.announced = True
        self.next_probe_at = now

    def start_failed(self, now: float, reason: str, *, permanent: bool) -> Transition | None:
        """The executor could not start it: verification (permanent) or a runtime error."""
        if self.state is not State.STARTING:
            return None
        if permanent:
            # STARTING -> FATAL: a pinned file or image does not match; retrying cannot help
            return self._fatal(now, reason)
        # STARTING -> BACKOFF (or FATAL after max_failures)
        return self._failure(now, reason)

    def start_deferred(self, now: float, reason: str) -> Transition | None:
        """The daemon could not make the start (engine unreachable, out of descriptors): not the model's
        failure. It waits (0.5 s, doubling up to DAEMON_SIDE_RETRY_S) and is tried again; the failure and
        restart counts are left as they were."""
        if self.state is not State.STARTING:
            return None
        # The start never happened: it is no restart either (the count and the first-start flag go back).
        if self._counted_restart:
            self.restarts -= 1
        else:
            self._started_once = False
        self._counted_restart = False
        self.deferred = True
        self.running_since = None
        self.next_probe_at = None
        delay = min(DAEMON_SIDE_RETRY_S, DAEMON_SIDE_FIRST_RETRY_S * 2 ** self._deferrals)
        self._deferrals += 1
        self.backoff_s = delay
        self.backoff_until = now + delay
        # STARTING -> BACKOFF: daemon-side, consecutive_failures unchanged (never toward FATAL)
        return self._to(now, State.BACKOFF,
                        f"daemon-side: {reason}; not counted as a failure; retry in {delay:g}s")

    def adopt(self, now: float) -> Transition | None:
        """A running container with a matching config hash was found: keep it, probe it."""
        if self.state is not State.STOPPED:
            return None
        self._started_once = True
        self.probe_inconclusive = False
        self.announces = self.announced = False    # nobody reads what an adopted server says: probed
        # STOPPED -> STARTING: adopted; the first good probe makes it RUNNING
        t = self._to(now, State.STARTING, "adopted running container")
        self.started_at = now
        self.next_probe_at = now
        return t

    def restore(self, now: float, *, failures: int, fatal_reason: str | None) -> Transition | None:
        """What a previous daemon recorded for this same config: the failure count, and FATAL with its reason."""
        if self.state is not State.STOPPED:
            return None
        self.consecutive_failures = max(0, failures)
        if fatal_reason is None:
            return None
        # STOPPED -> FATAL: it was FATAL when the daemon stopped; only a start or a manifest change leaves it
        return self._fatal(now, fatal_reason)

    def probe(self, now: float, outcome: ProbeOutcome, detail: str = "") -> Transition | None:
        match self.state:
            case State.STARTING:
                self.next_probe_at = now + self._starting_wait(now - self.started_at)
                self.probe_inconclusive = outcome is ProbeOutcome.INCONCLUSIVE
                match outcome:
                    case ProbeOutcome.INCONCLUSIVE:
                        return None   # no verdict: the start budget waits for one
                    case ProbeOutcome.OK:
                        if self._loading:           # a load this lifecycle started (not an adoption)
                            self.recent_loads = (*self.recent_loads, now - self.started_at)[-LOAD_HISTORY:]
                        self.running_since = now
                        self._loading = False
                        self.probe_failures = 0
                        self.next_probe_at = now + self.health.interval_s
                        # STARTING -> RUNNING
                        return self._to(now, State.RUNNING, "healthy")
                    case ProbeOutcome.LOADING | ProbeOutcome.FAILED:
                        return self.tick(now)  # progress (or not yet listening) until start_timeout
                    case _:
                        assert_never(outcome)
            case State.RUNNING:
                self.next_probe_at = now + self.health.interval_s
                match outcome:
                    case ProbeOutcome.INCONCLUSIVE:
                        return None   # the daemon could not ask: the count of failed probes stands as it was
                    case ProbeOutcome.OK:
                        self.probe_failures = 0
                        return self.tick(now)
                    case ProbeOutcome.LOADING | ProbeOutcome.FAILED:
                        self.probe_failures += 1
                        if self.probe_failures < self.health.failures:
                            return None
                        return self._crashed(
                            now, f"health check failed {self.probe_failures}x ({detail or outcome.value})"
                        )
                    case _:
                        assert_never(outcome)
            case State.STOPPED | State.BACKOFF | State.STOPPING | State.EXITED | State.FATAL | State.DRAINING:
                return None   # a late result for a container no longer probed
            case _:
                assert_never(self.state)

    def hung(self, now: float, reason: str) -> Transition | None:
        """The container is paused or not answering at all: restart it."""
        match self.state:
            case State.RUNNING:
                return self._crashed(now, reason)
            case State.STARTING:
                # STARTING -> BACKOFF: it never became healthy
                return self._failure(now, reason)
            case State.STOPPED | State.BACKOFF | State.STOPPING | State.EXITED | State.FATAL | State.DRAINING:
                return None   # DRAINING: the drain deadline stops it anyway
            case _:
                assert_never(self.state)

    def container_exited(
        self, now: float, *, exit_code: int | None, oom_killed: bool = False, log_tail: str = ""
    ) -> Transition | None:
        self.last_exit_code = exit_code
        why = "OOMKilled" if oom_killed else f"exited with code {exit_code}"
        if log_tail:
            why += f"; last log: {log_tail.strip()}"
        match self.state:
            case State.STARTING:
                # STARTING -> BACKOFF (or FATAL): it never became healthy
                return self._failure(now, f"{why} while starting", exit_code=exit_code, oom_killed=oom_killed)
            case State.RUNNING:
                return self._crashed(now, why, exit_code=exit_code, oom_killed=oom_killed)
            case State.STOPPING:
                # STOPPING -> STOPPED
                return self._to(now, State.STOPPED, "stopped")
            case State.DRAINING:
                # DRAINING -> STOPPED: the old config's container is gone early; the new one is created next
                self.drain_until = None
                return self._to(now, State.STOPPED, f"{why} while draining for a recreate")
            case State.STOPPED | State.BACKOFF | State.EXITED | State.FATAL:
                return None
            case _:
                assert_never(self.state)

    def stop_requested(self, now: float, *, disable: bool = True, reason: str = "stop requested") -> Transition | None:
        """The operator (or a restart) wants it down; `disable=False` keeps it wanted afterwards."""
        self.enabled = not disable
        match self.state:
            case State.STARTING | State.RUNNING | State.DRAINING:
                # STARTING -> STOPPING, RUNNING -> STOPPING, DRAINING -> STOPPING
                self.drain_until = None
                return self._to(now, State.STOPPING, reason)
            case State.BACKOFF | State.EXITED | State.FATAL:
                # BACKOFF -> STOPPED, EXITED -> STOPPED, FATAL -> STOPPED
                self.consecutive_failures = 0
                return self._to(now, State.STOPPED, reason)
            case State.STOPPED | State.STOPPING:
                return None
            case _:
                assert_never(self.state)

    def stopped(self, now: float) -> Transition | None:
        """The executor stopped the container."""
        if self.state is State.STOPPING:
            # STOPPING -> STOPPED
            return self._to(now, State.STOPPED, "stopped")
        return None

    def start_requested(self, now: float, *, reason: str = "start requested") -> Transition | None:
        """An explicit start: the only way out of FATAL besides a manifest change."""
        self.enabled = True
        match self.state:
            case State.FATAL | State.BACKOFF | State.EXITED:
                # FATAL -> STOPPED, BACKOFF -> STOPPED, EXITED -> STOPPED: failures forgotten, start at once
                self.consecutive_failures = 0
                return self._to(now, State.STOPPED, reason)
            case State.STOPPED | State.STARTING | State.RUNNING | State.STOPPING | State.DRAINING:
                return None
            case _:
                assert_never(self.state)

    def config_changed(
        self, now: float, *, health: HealthPolicy, restart: RestartSettings
    ) -> Transition | None:
        """The model's manifest changed: new policies, failures forgotten, FATAL left."""
        self.health = health
        self.restart = restart
        self.consecutive_failures = 0
        match self.state:
            case State.FATAL | State.BACKOFF | State.EXITED:
                # FATAL -> STOPPED, BACKOFF -> STOPPED, EXITED -> STOPPED
                return self._to(now, State.STOPPED, "manifest changed")
            case State.STOPPED | State.STARTING | State.RUNNING | State.STOPPING | State.DRAINING:
                return None   # the planner recreates a live container whose hash changed
            case _:
                assert_never(self.state)

    def tick(self, now: float) -> Transition | None:
        """Deadlines: the start budget, the healthy-reset window."""
        match self.state:
            case State.STARTING:
                if not self.probe_inconclusive and now - self.since >= self.health.start_timeout_s:
                    # STARTING -> BACKOFF (or FATAL)
                    return self._failure(now, f"not healthy after {self.health.start_timeout_s:g}s")
            case State.RUNNING:
                if (
                    self.consecutive_failures
                    and self.running_since is not None
                    and now - self.running_since >= self.restart.healthy_reset_s
                ):
                    self.consecutive_failures = 0   # healthy long enough: the backoff starts over
            case State.STOPPED | State.BACKOFF | State.STOPPING | State.EXITED | State.FATAL | State.DRAINING:
                pass   # DRAINING: the loop ends it (drain_until is in next_deadline)
            case _:
                assert_never(self.state)
        return None

    def drain(self, now: float, *, until: float, inflight: int) -> Transition | None:
        """The manifest changed while it serves: its requests in flight finish (until `until` at the
        latest), none is sent to it any more; then the planner recreates it."""
        if self.state is not State.RUNNING:
            return None
        self.drain_until = until
        # RUNNING -> DRAINING
        return self._to(now, State.DRAINING, f"manifest changed: draining {inflight} request(s) in flight,"
                                              f" then recreating")

    def handing_over(self, reason: str) -> None:
        """Start-first: the new container starts beside the old one, which still serves (RUNNING stays)."""
        if self.state is State.RUNNING:
            self.reason = reason

    def handed_over(self, now: float) -> None:
        """Start-first: the route moved to the new container, healthy: it is the one probed from now on.
        Counted as a restart, as a stop-first recreate is; RUNNING stays."""
        if self.state is not State.RUNNING:
            return
        self.restarts += 1
        self.probe_failures = 0
        self.running_since = now
        self.started_at = now
        self.next_probe_at = now + self.health.interval_s
        self.reason = "healthy (config changed: the new container took over)"

    def resume(self, now: float) -> Transition | None:
        """The manifest changed back while it drained: it serves again, as it was."""
        if self.state is not State.DRAINING:
            return None
        self.drain_until = None
        # DRAINING -> RUNNING: no recreate needed any more
        t = self._to(now, State.RUNNING, "manifest changed back: serving again")
        self.next_probe_at = now
        return t

    # --- internals ------------------------------------------------------------------------

    def _restart_after_exit(self) -> bool:
        match self.restart.policy:
            case RestartPolicy.ALWAYS:
                return True
            case RestartPolicy.ON_FAILURE:
                return self.last_exit_code != 0
            case RestartPolicy.NEVER:
                return False
            case _:
                assert_never(self.restart.policy)

    def _crashed(
        self, now: float, why: str, *, exit_code: int | None = None, oom_killed: bool = False
    ) -> Transition:
        """RUNNING went bad: at once after a stable run, else one more consecutive failure."""
        stable = self.running_since is not None and now - self.running_since >= self.restart.stable_after_s
        if stable or self.restart.policy is RestartPolicy.NEVER or not self._restart_after_exit():
            self.running_since = None
            self.next_probe_at = None
            # RUNNING -> EXITED: ran long enough to count as a success; restart at once (policy allowing)
            return self._to(now, State.EXITED, why)
        # RUNNING -> BACKOFF (or FATAL): crashed soon after it started
        return self._failure(now, why, exit_code=exit_code, oom_killed=oom_killed)

    def _failure(
        self, now: float, why: str, *, exit_code: int | None = None, oom_killed: bool = False
    ) -> Transition:
        self.running_since = None
        self.next_probe_at = None
        self.consecutive_failures += 1
        if self.restart.policy is RestartPolicy.NEVER or (
            self.restart.policy is RestartPolicy.ON_FAILURE and exit_code == 0 and not oom_killed
        ):
            # STARTING -> EXITED, RUNNING -> EXITED: the policy does not restart it
            return self._to(now, State.EXITED, why)
        if self.consecutive_failures >= self.restart.max_failures:
            # STARTING -> FATAL, RUNNING -> FATAL
            return self._fatal(now, f"{why} ({self.consecutive_failures} consecutive failures)")
        delay = self.backoff_delay(self.consecutive_failures)
        self.backoff_s = delay
        self.backoff_until = now + delay
        # STARTING -> BACKOFF, RUNNING -> BACKOFF
        return self._to(now, State.BACKOFF, f"{why}; retry in {delay:.1f}s")

    def backoff_delay(self, failures: int) -> float:
        """initial * 2^(failures-1), capped, then +/- jitter (never above the cap)."""
        base = min(self.restart.backoff_initial_s * 2.0 ** (failures - 1), self.restart.backoff_max_s)
        if self._jitter:
            base *= 1 + self._rng.uniform(-self._jitter, self._jitter)
        return min(base, self.restart.backoff_max_s)

    def _fatal(self, now: float, why: str) -> Transition:
        self.running_since = None
        self.next_probe_at = None
        self.backoff_until = None
        return self._to(now, State.FATAL, why)

    def _to(self, now: float, new: State, reason: str) -> Transition:
        old = self.state
        if new not in ALLOWED[old]:
            raise TransitionError(f"{self.model}: {old.name} -> {new.name} is not allowed ({reason})")
        self.state = new
        self.since = now
        self.reason = reason
        if new is not State.STARTING and new is not State.RUNNING:
            self.next_probe_at = None
        return Transition(self.model, old, new, reason)
