"""The one loop thread: it owns every model's state, fed by a queue of typed events.

(About 600 lines, over the 450 the layout allows without a reason: the reconcile — plan,
execute, store — and the shutdown steps still live here beside the iteration that owns the
slots. They are the next part to become an object of their own; until then this file says so.)

Each iteration waits on the queue until the next deadline (`queue.get(timeout=)`,
never sleep), handles what arrived, ticks the lifecycles, schedules on-demand models,
plans and applies the actions one model at a time, sends due probes and publishes a
status snapshot and the gateway's routes. Unchanged models get no Docker call: only a
resync (every ~30 s, or after the events stream reconnects) lists containers.

This module holds the iteration, the reconcile and shutdown, and owns the slots and the
container cache. Its parts are objects given them as inputs: the manifests (`Manifests`,
manifests.py), container events (`ContainerEvents`, containers.py), control commands
(`Commands`, commands.py) and the gateway's requests (`OnDemandScheduler`, ondemand.py); each
returns the transitions for the loop to log. What the loop publishes is computed by the pure
`reporting.publish`.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, assert_never

import structlog

from supervisor.control.api import CommandResult, MetricsSink, Notifier, NullMetrics, NullNotifier
from supervisor.core.actions import Action, Create, CreateSuccessor, Drain, Recreate, Remove, Resume, Start, Stop
from supervisor.core.commands import Readiness
from supervisor.core.demand import Demand
from supervisor.core.events import (
    ContainerEvent,
    ControlRequest,
    EnsureRunning,
    Event,
    ManifestsChanged,
    ProbeResult,
    SignalReceived,
    Tick,
)
from supervisor.core.lifecycle import State, Transition
from supervisor.core.observed import ObservedContainer
from supervisor.core.planner import LOADING, UP, Diff, Serving, Want, plan
from supervisor.core.routing import Route
from supervisor.core.scheduler import Budget, SwapSettings
from supervisor.core.status import ModelStatus
from supervisor.daemon.commands import Commands
from supervisor.daemon.containers import ContainerEvents, Heard, last_lines
from supervisor.daemon.executor import Executor
from supervisor.daemon.handover import Handovers
from supervisor.daemon.kvkeeper import KvKeeper
from supervisor.daemon.kvstore import KvStore
from supervisor.artifacts.verify import Verifier
from supervisor.daemon.manifests import LoadDesired, Manifests
from supervisor.daemon.ondemand import OnDemandScheduler
from supervisor.daemon.reporting import MemorySampler, publish, remember_failures
from supervisor.daemon.state import LoopSettings, ProbeSink, Slot, endpoint
from supervisor.daemon.statefile import StateFile
from supervisor.errors import (
    DaemonSideError,
    ModelMismatch,
    RetryableError,
    RuntimeOperationError,
    VerificationError,
)
from supervisor.runtime import Runtime

log = structlog.get_logger("supervisor.daemon")

class Supervisor:
    def __init__(
        self,
        *,
        events: queue.Queue[Event],
        runtime: Runtime,
        verifier: Verifier,
        load_desired: LoadDesired,
        prober: ProbeSink,
        notifier: Notifier | None = None,
        metrics: MetricsSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        settings: LoopSettings = LoopSettings(),
        demand: Demand | None = None,
        budget: Budget = Budget(),
        state: StateFile | None = None,
        kv_store: KvStore | None = None,
        kv_off_reason: str = "",
        swap: SwapSettings = SwapSettings(),
    ) -> None:
        self.events = events
        self.runtime = runtime
        self.slots: dict[str, Slot] = {}
        # KV caches kept across stops (kvkeeper.py): None when the daemon keeps none
        self.kv = (KvKeeper(kv_store, self.slots, metrics or NullMetrics(), off_reason=kv_off_reason)
                   if kv_store is not None else None)
        self.executor = Executor(runtime, verifier, stop_timeout_s=settings.stop_timeout_s, kv=self.kv,
                                 before_stop=self._before_stop)
        self._load_desired = load_desired
        self._prober = prober
        self.notifier = notifier or NullNotifier()
        self._metrics = metrics or NullMetrics()
        self.clock = clock
        self.rng = rng or random.Random()
        self.settings = settings
        self.demand = demand or Demand(clock)
        self.budget = budget
        self.state = state or StateFile(None)            # failure counts and FATAL across restarts

        self.cache: dict[str, ObservedContainer] = {}     # container ID -> what we last saw
        self.manifests = Manifests(load_desired)
        self.stopping = False
        self.iterations = 0
        self._resync_at = 0.0
        self._resync_now = True
        self.commands = Commands(settings.command_timeout_s)
        self._ready_sent = False
        self.ondemand = OnDemandScheduler(self.demand, budget, self._metrics, swap)
        self.containers = ContainerEvents(runtime, self._metrics, prober)
        # start-first recreates (handover.py): the new container beside the old, the route moved when healthy
        self.handovers = Handovers(runtime=runtime, demand=self.demand, ondemand=self.ondemand, prober=prober,
                                   metrics=self._metrics, mode=settings.recreate, stop_timeout_s=settings.stop_timeout_s)
        self._snapshot: tuple[ModelStatus, ...] = ()
        self._routes: dict[str, Route] = {}
        self.memory = MemorySampler(runtime.memory_usage)
        self._snapshot_lock = threading.Lock()
        self.published = threading.Event()       # set by the first _publish: the gateway holds requests until then
        self.done = threading.Event()

    # --- the sinks the parts report to (a test may swap one) ------------------------------------

    @property
    def metrics(self) -> MetricsSink:
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: MetricsSink) -> None:
        self._metrics = self.ondemand.metrics = self.containers.metrics = self.handovers.metrics = metrics
        if self.kv is not None:
            self.kv.metrics = metrics

    def _before_stop(self, model: str, port: int | None) -> None:
        """Before a graceful stop: no idle keep-alive connection to the model is left open (the prober's, the
        gateway's), since llama-server's exit on SIGTERM waits about 0.1 s while one is."""
        if not port:
            return
        slot = self.slots.get(model)
        self._prober.release(slot.desired.spec.host_ip if slot is not None else "127.0.0.1", port)
        self.demand.stopping(model, port)

    @property
    def prober(self) -> ProbeSink:
        return self._prober

    @prober.setter
    def prober(self, prober: ProbeSink) -> None:
        self._prober = self.containers.prober = self.handovers.prober = prober

    @property
    def manifests_ok(self) -> bool:
        """A good set has been applied (until then: plan nothing, remove nothing)."""
        return self.manifests.ok

    @property
    def problems(self) -> list[str]:
        """Of the last failed manifest read."""
        return self.manifests.problems

    # --- producers call these (any thread) ---------------------------------------------------

    def post(self, event: Event) -> None:
        self.events.put(event)

    def snapshot(self) -> tuple[ModelStatus, ...]:
        with self._snapshot_lock:
            return self._snapshot

    def routes(self) -> dict[str, Route]:
        """Every model name and alias -> where the gateway sends its requests (as last published)."""
        with self._snapshot_lock:
            return self._routes

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        """The loop thread's body; returns after a shutdown."""
        log.info("loop starting", pid=os.getpid(), resync_interval_s=self.settings.resync_interval_s)
        self._reload(apply=True, origin="start")
        while not self.stopping:
            self.iteration()
        self._shutdown_steps()
        self.done.set()

    def iteration(self, *, block: bool = True) -> None:
        """One pass: wait for an event or the next deadline, handle everything queued, reconcile."""
        timeout = self._wait_s() if block else 0.0
        try:
            first: Event | None = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            first = None
        batch: list[Event] = [] if first is None else [first]
        while len(batch) < 256:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                break
        for ev in batch:
            self._handle(ev)
            if self.stopping:
                return
        self._reconcile()
        self._publish()
        remember_failures(self.slots, self.state)
        self.notifier.watchdog()
        self.iterations += 1

    def _publish(self) -> None:
        """Publish the snapshot and the routes (the gateway reads them), then let the requests whose
        model is RUNNING go ahead."""
        now = self.clock()
        swaps = {n: (s.count, s.last_wait_s) for n, s in self.ondemand.swaps.items()}
        handovers = {n: d for n, s in self.slots.items() if (d := self.handovers.describe(s, self.cache))}
        snap, table = publish(self.slots, self.cache, self.demand.usage, self.memory.sample(self.slots, now), now,
                              **self._kv_report(), swaps=swaps, verified=self.executor.verified, handovers=handovers)
        with self._snapshot_lock:
            changed = snap != self._snapshot
            self._snapshot = snap
            self._routes = table
        self.published.set()
        for slot in self.slots.values():
            slot.recreated = False          # its new route is out: the scheduler's next pass undrains it
        self.ondemand.answer_ready(table)
        if changed:
            running = sum(1 for s in snap if s.state == State.RUNNING.name)
            self.notifier.status(f"{running}/{len(snap)} models running")

    def _kv_report(self) -> dict[str, Any]:
        if self.kv is None:
            return {}
        if self.kv.off_reason:
            return {"kv": None, "kv_off": self.kv.off_reason}
        return {"kv": self.kv.usage()}

    def _wait_s(self) -> float:
        now = self.clock()
        deadlines = [self._resync_at, now + self.settings.max_wait_s]
        deadlines += [d for s in self.slots.values() if (d := s.lc.next_deadline()) is not None]
        deadlines += self.commands.deadlines()
        deadlines += self.handovers.deadlines(self.slots)
        if (idle := self.ondemand.idle_deadline(self.slots)) is not None:
            deadlines.append(idle)
        if self._resync_now:
            return 0.0
        return max(0.0, min(deadlines) - now)

    # --- events ------------------------------------------------------------------------------

    def _handle(self, ev: Event) -> None:
        match ev:
            case ContainerEvent():
                self._heard(self.containers.on_event(ev, self.slots, self.cache, self.clock()))
            case ProbeResult():
                if not self.handovers.on_probe(ev, self.slots, self.cache, self.clock()):
                    self._log_transition(self.containers.on_probe(ev, self.slots, self.clock()))
            case ManifestsChanged(origin=origin):
                self._reload(apply=True, origin=origin)
            case ControlRequest(command=cmd, future=fut):
                for t in self.commands.handle(cmd, fut, slots=self.slots, now=self.clock(),
                                              reload=self._reload_for_command, shutdown=self._shutdown_requested,
                                              demand=self.demand):
                    self._log_transition(t)
            case EnsureRunning():
                self.ondemand.request(ev, known=ev.model in self.slots, stopping=self.stopping, now=self.clock())
            case SignalReceived(signum=signum):
                self._on_signal(signum)
            case Tick(resync=resync):
                if resync:
                    self._resync_now = True
            case _:
                assert_never(ev)

    def _reload(self, *, apply: bool, origin: str) -> Diff | None:
        if origin != "start":
            self.notifier.reloading()
        try:
            self.notifier.watchdog()    # the read may take up to its deadline (half the watchdog): start it fresh
            r = self.manifests.reload(self.slots, apply=apply, origin=origin, clock=self.clock, rng=self.rng,
                                      state=self.state, metrics=self._metrics, forget=self._forget)
            for t in r.transitions:
                self._log_transition(t)
            if self.kv is not None and self.manifests_ok:
                self.kv.bound(self.slots)
            return r.diff
        finally:
            if origin != "start" and self._ready_sent:
                self.notifier.ready()

    def _forget(self, name: str) -> None:
        """A model removed from the manifests: its metrics, request counts, waiting requests and
        remembered failures go."""
        self._metrics.forget(name)
        self.demand.forget(name)
        self.ondemand.answer(name, "unknown", f"model {name!r} was removed from the manifests")
        self.ondemand.forget(name)
        self.state.forget(name)

    def _heard(self, heard: Heard) -> None:
        if heard.resync:
            self._resync_now = True
        for t in heard.transitions:
            self._log_transition(t)

    def _reload_for_command(self, apply: bool, origin: str) -> tuple[Diff | None, list[str]]:
        d = self._reload(apply=apply, origin=origin)
        return d, self.problems

    def _shutdown_requested(self, stop_models: bool) -> None:
        self._begin_shutdown(stop_models=stop_models)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: re-reading manifests")
            self._reload(apply=True, origin="SIGHUP")
        elif signum in (signal.SIGTERM, signal.SIGINT):
            log.info("signal: shutting down", signal=signal.Signals(signum).name,
                     stop_models=self.settings.stop_models_on_exit)
            self._begin_shutdown(stop_models=self.settings.stop_models_on_exit)
        else:
            log.warning("signal ignored", signum=signum)

    # --- reconcile -----------------------------------------------------------------------------

    def _reconcile(self) -> None:
        if not self.manifests_ok:
            return
        now = self.clock()
        t0 = time.monotonic()
        if self._resync_now or now >= self._resync_at:
            self._resync(now)
        for slot in self.slots.values():
            self._log_transition(slot.lc.tick(now))
        self.handovers.check(self.slots, self.cache, now)
        ran = False
        for _ in range(3):          # a stop that makes a restart possible plans again at once
            for t in self.ondemand.schedule(self.slots, now):   # on-demand starts, evictions, idle stops
                self._log_transition(t)
            self._prepare(self.ondemand.take_upcoming())
            if self._resync_now:
                # An action failed part-way (a recreate that removed the old container, then
                # failed to create or start): plan from what the engine has, not the stale cache.
                self._resync(now)
            actions = plan(self._wants(now), list(self.cache.values()))
            if not actions:
                break
            ran = True
            # The routes first: the actions block this thread (a Docker start in place, 0.1-0.25 s), and a
            # crashed model's route said RUNNING meanwhile, so a request that met the dead model was sent
            # to it again and, after the engine's start, to its port while it loaded (a 503 "Loading model").
            self._publish()
            self._execute(actions)
            now = self.clock()
        if ran:
            self.metrics.reconcile(time.monotonic() - t0)
        self.containers.send_probes(self.slots, self.cache, now)
        self.handovers.send_probes(self.slots, self.cache, now)
        self.commands.check_waiters(self.slots, now)
        if not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready()
            log.info("ready", models=len(self.slots))
        self.commands.answer_reloads()

    def _prepare(self, models: list[str]) -> None:
        """A swap's targets, before the stops that make their room run (on this thread, next): each one's
        stopped container, of its current config, is prepared beside them (Runtime.prepare), so that its
        start after them is shorter. The start itself, and its checks, come as before."""
        for name in models:
            slot = self.slots.get(name)
            c = self.cache.get(slot.container_id) if slot is not None and slot.container_id else None
            if slot is None or c is None or c.status not in ("exited", "created"):
                continue
            if c.config_hash != slot.desired.spec.config_hash():
                continue                        # it is recreated, not started: nothing to prepare
            self.runtime.prepare(c.id)

    def _resync(self, now: float) -> None:
        self._resync_now = False
        self._resync_at = now + self.settings.resync_interval_s
        try:
            listed = self.runtime.list_managed()
        except RetryableError as e:
            log.error("resync failed; docker unreachable", error=str(e))
            self._resync_at = now + min(5.0, self.settings.resync_interval_s)
            return
        self.runtime.maintain()
        self.cache = {c.id: c for c in listed}
        t0 = time.monotonic()
        for slot in self.slots.values():
            lc = slot.lc
            if lc.live and slot.container_id is not None:
                c = self.cache.get(slot.container_id)
                if c is None or c.status not in UP:
                    self._heard(self.containers.refresh_exit(slot.container_id, self.slots, self.cache, now,
                                                             event=None))   # an exit the events missed
                elif c.status == "paused":
                    self._log_transition(lc.hung(now, "container paused (hung): restart"))
            elif lc.state is State.STOPPED and (lc.enabled or slot.desired.serving.on_demand):
                # adoption: a container we left running (daemon restart) whose config still matches
                want_hash = slot.desired.spec.config_hash()
                match = [c for c in listed if c.model == slot.desired.name and c.config_hash == want_hash
                         and c.status == "running"]
                if match:
                    slot.container_id = match[0].id
                    slot.made_with = slot.desired
                    log.info("adopted", model=slot.desired.name, container=match[0].id[:12])
                    lc.enabled = True
                    self.demand.touch(slot.desired.name)   # an adopted on-demand model gets a full idle TTL
                    self._log_transition(lc.adopt(now))
        self.metrics.reconcile(time.monotonic() - t0)

    def _wants(self, now: float) -> dict[str, Want]:
        return {n: Want(s.desired, run=s.lc.wants_running(now) and not self.stopping, live=s.lc.live,
                        loaded=s.lc.loaded,
                        serving=self._serving(n, s, now),
                        start_first=self.handovers.start_first(s, self.slots, self.cache),
                        handover=self.handovers.view(s, now))
                for n, s in self.slots.items()}

    def _serving(self, name: str, slot: Slot, now: float) -> Serving:
        lc = slot.lc
        if lc.state is State.RUNNING:
            return Serving.ROUTED
        if lc.state is not State.DRAINING:
            return Serving.NO
        over = self.demand.usage(name).inflight == 0 or (lc.drain_until is not None and now >= lc.drain_until)
        return Serving.DRAINED if over else Serving.DRAINING

    def _drain(self, action: Drain | Resume) -> None:
        """Drain: no new request enters the model (they wait for the new container), those in flight
        finish until the stop timeout; Demand.leave wakes the loop when the last one is done."""
        slot = self.slots.get(action.model)
        if slot is None:
            return
        now = self.clock()
        if isinstance(action, Resume):
            self.demand.undrain(action.model)
            self._log_transition(slot.lc.resume(now))
            return
        log.info("recreate: stop-first (drain, stop, then start the new container)", model=action.model,
                 why_not_start_first=self.handovers.why_not(slot, self.slots))
        self.demand.mark_draining(action.model)
        inflight = self.demand.usage(action.model).inflight
        slot.drain_requests = inflight
        self._log_transition(slot.lc.drain(now, until=now + self.settings.stop_timeout_s, inflight=inflight))

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Create() | Recreate() | Start():
                    self._bring_up(action)
                case Stop(model=m, container_id=cid):
                    if self._apply(action, cid) is not False:
                        slot = self.slots.get(m)
                        if slot is not None:
                            self._log_transition(slot.lc.stopped(self.clock()))
                case Remove(container_id=cid, model=m):
                    if self._apply(action, cid) and (slot := self.slots.get(m)) is not None:
                        self.handovers.removed(slot, cid, self.clock())
                case CreateSuccessor():
                    self._start_successor(action)
                case Drain() | Resume():
                    self._drain(action)
                case _:
                    assert_never(action)

    def _apply(self, action: Stop | Remove, cid: str) -> bool:
        try:
            after = self.executor.apply(action, self.cache.get(cid))
        except RetryableError as e:
            log.error("action failed", action=type(action).__name__, model=action.model, error=str(e))
            self._resync_now = True
            return False
        except VerificationError:   # pragma: no cover - only create/recreate verify
            raise
        self._store(cid, after)
        return True

    def _start_successor(self, action: CreateSuccessor) -> None:
        """Start-first: the new container beside the old one, which keeps serving (Handovers probes it)."""
        slot = self.slots[action.model]
        try:
            after = self.executor.apply(action, self.cache.get(action.old_id))
        except (VerificationError, RetryableError) as e:
            self._resync_now = True
            self.handovers.could_not_begin(slot, f"{type(e).__name__}: {e}")   # the stop-first path says it again
            return
        if after is None:
            self._resync_now = True
            self.handovers.could_not_begin(slot, "container vanished after start")
            return
        self.cache[after.id] = after
        self.handovers.began(slot, action, after, self.clock())

    def _bring_up(self, action: Create | Recreate | Start) -> None:
        model = action.model
        slot = self.slots[model]
        now = self.clock()
        if slot.lc.state is State.DRAINING:
            left = self.demand.usage(model).inflight
            log.info("drained" if not left else "drain timed out: stopping with requests in flight", model=model,
                     requests=slot.drain_requests, still_in_flight=left)
            self.metrics.drained(model, slot.drain_requests, timed_out=left > 0)
            # Demand keeps it draining until the STARTING route is published: the route published
            # last still names the old port, which the new container may bind while it loads (503s).
            slot.recreated = True
        retry_of_deferred = slot.lc.deferred        # a start the daemon could not make: no restart
        t = slot.lc.start_attempt(now, reason=_start_reason(action))
        self._log_transition(t)
        if t is not None and t.from_state in (State.EXITED, State.BACKOFF) and not retry_of_deferred:
            self.metrics.restart(model, slot.lc.reason)
        old = action.old_id if isinstance(action, Recreate) else None
        cid = action.container_id if isinstance(action, Start) else old
        try:
            after = self.executor.apply(action, self.cache.get(cid) if cid else None)
        except VerificationError as e:
            what = "model" if isinstance(e, ModelMismatch) else "image"
            self.metrics.verification_failure(model, what)
            log.error("verification failed; start refused", model=model, error=str(e))
            self._log_transition(slot.lc.start_failed(self.clock(), f"verification failed: {e}", permanent=True))
            return
        except DaemonSideError as e:
            # The engine unreachable, the daemon out of descriptors: not the model's failure. It waits
            # in BACKOFF (its failure count unchanged) and is tried again (the log line is rate-limited).
            log.warning("start deferred; daemon-side", model=model, error=str(e))
            self._resync_now = True
            self._log_transition(slot.lc.start_deferred(self.clock(), str(e)))
            return
        except RuntimeOperationError as e:
            log.error("start failed", model=model, error=str(e))
            self._resync_now = True
            self._log_transition(slot.lc.start_failed(self.clock(), f"runtime: {e}", permanent=False))
            return
        if old is not None:
            self.cache.pop(old, None)
        if after is None:
            self._resync_now = True
            self._log_transition(slot.lc.start_failed(self.clock(), "container vanished after start",
                                                      permanent=False))
            return
        self.cache[after.id] = after
        slot.container_id = after.id
        slot.made_with = action.desired if not isinstance(action, Start) else slot.desired
        slot.lc.container_started(self.clock(), announces=self.runtime.announces_ready)
        if after.status not in UP:
            self._log_transition(slot.lc.container_exited(
                self.clock(), exit_code=after.exit_code, oom_killed=after.oom_killed,
                log_tail=last_lines(self.runtime.log_tail(after.id, lines=5), 3)))

    def _log_transition(self, t: Transition | None) -> None:
        if t is None:
            return
        slot = self.slots.get(t.model)
        level = "warning" if t.to_state in (State.BACKOFF, State.FATAL, State.EXITED) else "info"
        where = {}
        if slot and t.to_state is State.RUNNING:     # tell the operator where the model answers
            host, port = endpoint(slot, self.cache)
            where["url"] = f"http://{host}:{port}"
        getattr(log, level)("transition", model=t.model, reason=t.reason,
                            container=(slot.container_id or "")[:12] if slot else "",
                            **{"from": t.from_state.name, "to": t.to_state.name}, **where)
        self.metrics.model_state(t.model, t.to_state.name)

    def _store(self, cid: str, after: ObservedContainer | None) -> None:
        if after is None:
            self.cache.pop(cid, None)
        else:
            self.cache[cid] = after

    # --- shutdown ------------------------------------------------------------------------------

    def _begin_shutdown(self, *, stop_models: bool) -> None:
        self.stopping = True
        self._stop_models_on_exit = stop_models
        self.notifier.stopping()

    def _shutdown_steps(self) -> None:
        stop_models = getattr(self, "_stop_models_on_exit", self.settings.stop_models_on_exit)
        self.commands.fail_waiters("daemon shutting down")
        self.ondemand.answer_all("shutting_down", "the daemon is shutting down")
        self.commands.answer_reloads()
        while True:       # fail commands that arrived after the signal
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                break
            if isinstance(ev, ControlRequest) and ev.future.set_running_or_notify_cancel():
                ev.future.set_result(CommandResult(ok=False, error="daemon shutting down"))
            elif isinstance(ev, EnsureRunning) and ev.future.set_running_or_notify_cancel():
                ev.future.set_result(Readiness("shutting_down", "the daemon is shutting down"))
        if not stop_models:
            log.info("leaving model containers running", models=sorted(self.slots))
            return
        for name, slot in sorted(self.slots.items()):
            if slot.handover is not None:    # the other container of a start-first recreate under way
                other = slot.handover.old_id if slot.handover.old_id != slot.container_id else slot.handover.successor_id
                try:
                    self.runtime.stop(other, timeout_s=self.settings.stop_timeout_s)
                except RetryableError as e:
                    log.error("stop failed", model=name, container=other[:12], error=str(e))
            cid = slot.container_id
            if cid is None:
                continue
            if slot.lc.state is State.STARTING and not slot.lc.loaded:
                log.info("killing model", model=name, container=cid[:12], reason=LOADING)
                try:
                    self.runtime.kill(cid)
                except RetryableError as e:
                    log.error("kill failed", model=name, container=cid[:12], error=str(e))
                continue
            log.info("stopping model", model=name, container=cid[:12], timeout_s=self.settings.stop_timeout_s)
            spent = self.kv.save(name, self.cache.get(cid), self.settings.stop_timeout_s) if self.kv else 0.0
            if (current := self.cache.get(cid)) is not None:
                self._before_stop(name, current.host_port)
            try:
                self.runtime.stop(cid, timeout_s=max(0.0, self.settings.stop_timeout_s - spent))
                log.info("stopped model", model=name, container=cid[:12])
            except RetryableError as e:
                log.error("stop failed; killing", model=name, error=str(e))
                try:
                    self.runtime.kill(cid)
                except RetryableError as e2:
                    log.error("kill failed", model=name, error=str(e2))

def _start_reason(action: Create | Recreate | Start) -> str:
    match action:
        case Create():
            return "creating container"
        case Recreate():
            return "config changed: recreating container"
        case Start():
            return "starting container in place"
        case _:
            assert_never(action)
