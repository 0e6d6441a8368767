"""The one loop thread: it owns every model's state, fed by a queue of typed events.

Each iteration waits on the queue until the next deadline (`queue.get(timeout=)`,
never sleep), handles what arrived, ticks the lifecycles, plans and applies the
actions one model at a time, sends due probes and publishes a status snapshot.
Unchanged models get no Docker call: only a resync (every ~30 s, or after the
events stream reconnects) lists containers.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Protocol, assert_never

import structlog

from supervisor.control.api import (
    Command,
    CommandResult,
    MetricsSink,
    ModelResult,
    Notifier,
    NullMetrics,
    NullNotifier,
    Reload,
    Reread,
    RestartModels,
    Shutdown,
    StartModels,
    StopModels,
    Update,
)
from supervisor.core.actions import Action, Create, Recreate, Remove, Start, Stop
from supervisor.core.events import (
    ContainerAction,
    ContainerEvent,
    ControlRequest,
    Event,
    ManifestsChanged,
    ProbeResult,
    SignalReceived,
    Tick,
)
from supervisor.core.lifecycle import Lifecycle, ProbeOutcome, State, Transition
from supervisor.core.observed import ObservedContainer
from supervisor.core.planner import UP, Diff, Want, diff, plan
from supervisor.core.spec import DesiredModel
from supervisor.core.status import ModelStatus
from supervisor.daemon.executor import Executor, Verifier
from supervisor.daemon.statefile import StateFile
from supervisor.errors import (
    ManifestError,
    RuntimeOperationError,
    RuntimeUnavailable,
    SupervisorError,
    VerificationError,
)
from supervisor.runtime import Runtime

log = structlog.get_logger("supervisor.daemon")

LoadDesired = Callable[[], Mapping[str, DesiredModel]]   # raises ManifestError (or another ConfigError)


class ProbeSink(Protocol):
    def submit(self, model: str, container_id: str, *, host_ip: str, port: int, timeout_s: float) -> bool: ...


@dataclass(frozen=True)
class LoopSettings:
    resync_interval_s: float = 30.0
    stop_timeout_s: float = 10.0
    stop_models_on_exit: bool = False
    max_wait_s: float = 5.0            # wake at least this often (systemd watchdog, waiter deadlines)
    command_timeout_s: float = 300.0   # a start/stop waiter gives up after this


@dataclass
class Slot:
    desired: DesiredModel
    lc: Lifecycle
    container_id: str | None = None    # the container the lifecycle tracks


@dataclass
class Waiter:
    kind: str                           # "start" | "stop"
    names: tuple[str, ...]
    future: Future[CommandResult]
    deadline: float
    unknown: tuple[str, ...] = ()
    attempted: set[str] = field(default_factory=set)


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
        state: StateFile | None = None,
    ) -> None:
        self.events = events
        self.runtime = runtime
        self.executor = Executor(runtime, verifier, stop_timeout_s=settings.stop_timeout_s)
        self._load_desired = load_desired
        self.prober = prober
        self.notifier = notifier or NullNotifier()
        self.metrics = metrics or NullMetrics()
        self.clock = clock
        self.rng = rng or random.Random()
        self.settings = settings
        self.state = state or StateFile(None)            # failure counts and FATAL across restarts

        self.slots: dict[str, Slot] = {}
        self.cache: dict[str, ObservedContainer] = {}     # container ID -> what we last saw
        self.manifests_ok = False                          # no good set yet: plan nothing, remove nothing
        self.problems: list[str] = []                     # of the last failed manifest read
        self.stopping = False
        self.iterations = 0
        self._resync_at = 0.0
        self._resync_now = True
        self._waiters: list[Waiter] = []
        self._after_reconcile: list[tuple[Future[CommandResult], CommandResult]] = []
        self._ready_sent = False
        self._snapshot: tuple[ModelStatus, ...] = ()
        self._snapshot_lock = threading.Lock()
        self.done = threading.Event()

    # --- producers call these (any thread) ---------------------------------------------------

    def post(self, event: Event) -> None:
        self.events.put(event)

    def snapshot(self) -> tuple[ModelStatus, ...]:
        with self._snapshot_lock:
            return self._snapshot

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
        self._remember_failures()
        self.notifier.watchdog()
        self.iterations += 1

    def _wait_s(self) -> float:
        now = self.clock()
        deadlines = [self._resync_at, now + self.settings.max_wait_s]
        deadlines += [d for s in self.slots.values() if (d := s.lc.next_deadline()) is not None]
        deadlines += [w.deadline for w in self._waiters]
        if self._resync_now:
            return 0.0
        return max(0.0, min(deadlines) - now)

    # --- events ------------------------------------------------------------------------------

    def _handle(self, ev: Event) -> None:
        match ev:
            case ContainerEvent():
                self._on_container_event(ev)
            case ProbeResult():
                self._on_probe(ev)
            case ManifestsChanged(origin=origin):
                self._reload(apply=True, origin=origin)
            case ControlRequest(command=cmd, future=fut):
                self._on_command(cmd, fut)
            case SignalReceived(signum=signum):
                self._on_signal(signum)
            case Tick(resync=resync):
                if resync:
                    self._resync_now = True
            case _:
                assert_never(ev)

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

    def _slot_of(self, container_id: str, model: str) -> Slot | None:
        slot = self.slots.get(model)
        if slot is None or slot.container_id != container_id:
            return None
        return slot

    def _on_container_event(self, ev: ContainerEvent) -> None:
        now = self.clock()
        slot = self._slot_of(ev.container_id, ev.model)
        match ev.action:
            case ContainerAction.DIE | ContainerAction.DESTROY:
                if ev.container_id not in self.cache and slot is None:
                    return
                # Docker reports our own kills too, possibly after we started the container again
                # in place: ask the engine what the container is now instead of trusting the event.
                self._refresh_exit(ev.container_id, now, event=ev)
            case ContainerAction.OOM:
                log.warning("container OOM", model=ev.model, container=ev.container_id[:12])
            case ContainerAction.PAUSE:
                if ev.container_id in self.cache:
                    self.cache[ev.container_id] = replace(self.cache[ev.container_id], status="paused")
                if slot is not None:
                    self._log_transition(slot.lc.hung(now, "container paused (hung): restart"))
            case ContainerAction.UNPAUSE:
                if ev.container_id in self.cache and self.cache[ev.container_id].status == "paused":
                    self.cache[ev.container_id] = replace(self.cache[ev.container_id], status="running")
            case ContainerAction.START:
                if ev.container_id not in self.cache and ev.model:
                    self._resync_now = True     # someone else started one of ours: look at everything
            case _:
                assert_never(ev.action)

    def _refresh_exit(self, container_id: str, now: float, *, event: ContainerEvent | None) -> None:
        """Re-inspect a container that died (or vanished) and tell its lifecycle."""
        try:
            c = self.runtime.inspect(container_id)
        except (RuntimeOperationError, RuntimeUnavailable) as e:
            log.warning("inspect failed", container=container_id[:12], error=str(e))
            self._resync_now = True
            return
        if c is None:
            old = self.cache.pop(container_id, None)
            model = old.model if old else (event.model if event else "")
            slot = self._slot_of(container_id, model)
            if slot is not None:
                slot.container_id = None
                self.metrics.exit(model, event.exit_code if event else None, False)
                self._log_transition(slot.lc.container_exited(
                    now, exit_code=event.exit_code if event else None, log_tail="container was removed"))
            return
        self.cache[container_id] = c
        if c.status in UP:
            return                              # a stale die: it was started again since
        slot = self._slot_of(container_id, c.model)
        if slot is None or not slot.lc.live:
            return
        tail = self.runtime.log_tail(container_id, lines=5) if slot.lc.state is not State.STOPPING else ""
        log.warning("container exited", model=c.model, container=container_id[:12], exit_code=c.exit_code,
                    oom_killed=c.oom_killed,
                    detected_after_ms=_since_ms(event.time_ns) if event and event.time_ns else None)
        self.metrics.exit(c.model, c.exit_code, c.oom_killed)
        self._log_transition(slot.lc.container_exited(
            now, exit_code=c.exit_code, oom_killed=c.oom_killed, log_tail=_last_lines(tail, 3)))

    def _on_probe(self, ev: ProbeResult) -> None:
        slot = self.slots.get(ev.model)
        if slot is None or slot.container_id != ev.container_id:
            return
        self.metrics.probe(ev.model, ev.latency_s, ev.outcome is ProbeOutcome.OK)
        if ev.outcome is not ProbeOutcome.OK and slot.lc.state is State.RUNNING:
            log.info("probe failed", model=ev.model, detail=ev.detail, failures=slot.lc.probe_failures + 1,
                     threshold=slot.lc.health.failures)
        self._log_transition(slot.lc.probe(self.clock(), ev.outcome, ev.detail))

    # --- manifests -----------------------------------------------------------------------------

    def _read(self) -> Mapping[str, DesiredModel] | None:
        self.problems = []
        try:
            return self._load_desired()
        except ManifestError as e:
            self.problems = list(e.problems)
            for problem in e.problems:
                log.error("invalid manifest; keeping the last good set", problem=problem)
        except SupervisorError as e:
            self.problems = [str(e)]
            log.error("manifests not loaded; keeping the last good set", error=str(e))
        return None

    def _reload(self, *, apply: bool, origin: str) -> Diff | None:
        if origin != "start":
            self.notifier.reloading()
        try:
            new = self._read()
            if new is None:
                return None
            current = {n: s.desired for n, s in self.slots.items()}
            d = diff(current, new)
            if not apply:
                return d
            self.manifests_ok = True
            now = self.clock()
            for name in d.removed:
                log.info("model removed from manifests", model=name)
                del self.slots[name]
                self.metrics.forget(name)
                self.state.forget(name)
            for name in d.added:
                m = new[name]
                log.info("model added", model=name, source=m.source_file, port=m.spec.host_port)
                self.slots[name] = Slot(m, Lifecycle(name, health=m.health, restart=m.restart, rng=self.rng))
                self.metrics.model_state(name, State.STOPPED.name)
                if (e := self.state.get(name, m.spec.config_hash())) is not None:   # a previous daemon's count
                    self._log_transition(self.slots[name].lc.restore(now, failures=e.failures, fatal_reason=e.fatal))
            for name in d.changed:
                m = new[name]
                slot = self.slots[name]
                log.info("model changed", model=name, source=m.source_file,
                         config_changed=slot.desired.spec != m.spec)
                slot.desired = m
                self._log_transition(slot.lc.config_changed(now, health=m.health, restart=m.restart))
            if not d.empty or origin == "start":
                log.info("manifests applied", origin=origin, added=d.added, changed=d.changed, removed=d.removed)
            return d
        finally:
            if origin != "start" and self._ready_sent:
                self.notifier.ready()

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
        ran = False
        for _ in range(3):          # a stop that makes a restart possible plans again at once
            if self._resync_now:
                # An action failed part-way (a recreate that removed the old container, then
                # failed to create or start): plan from what the engine has, not the stale cache.
                self._resync(now)
            actions = plan(self._wants(now), list(self.cache.values()))
            if not actions:
                break
            ran = True
            self._execute(actions)
            now = self.clock()
        if ran:
            self.metrics.reconcile(time.monotonic() - t0)
        self._send_probes(now)
        self._check_waiters(now)
        if not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready()
            log.info("ready", models=len(self.slots))
        for fut, result in self._after_reconcile:
            fut.set_result(result)
        self._after_reconcile.clear()

    def _resync(self, now: float) -> None:
        self._resync_now = False
        self._resync_at = now + self.settings.resync_interval_s
        try:
            listed = self.runtime.list_managed()
        except (RuntimeOperationError, RuntimeUnavailable) as e:
            log.error("resync failed; docker unreachable", error=str(e))
            self._resync_at = now + min(5.0, self.settings.resync_interval_s)
            return
        self.cache = {c.id: c for c in listed}
        t0 = time.monotonic()
        for slot in self.slots.values():
            lc = slot.lc
            if lc.live and slot.container_id is not None:
                c = self.cache.get(slot.container_id)
                if c is None or c.status not in UP:
                    self._refresh_exit(slot.container_id, now, event=None)   # an exit the events missed
                elif c.status == "paused":
                    self._log_transition(lc.hung(now, "container paused (hung): restart"))
            elif lc.state is State.STOPPED and lc.enabled:
                # adoption: a container we left running (daemon restart) whose config still matches
                want_hash = slot.desired.spec.config_hash()
                match = [c for c in listed if c.model == slot.desired.name and c.config_hash == want_hash
                         and c.status == "running"]
                if match:
                    slot.container_id = match[0].id
                    log.info("adopted", model=slot.desired.name, container=match[0].id[:12])
                    self._log_transition(lc.adopt(now))
        self.metrics.reconcile(time.monotonic() - t0)

    def _wants(self, now: float) -> dict[str, Want]:
        return {n: Want(s.desired, run=s.lc.wants_running(now) and not self.stopping, live=s.lc.live)
                for n, s in self.slots.items()}

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
                case Remove(container_id=cid):
                    self._apply(action, cid)
                case _:
                    assert_never(action)

    def _apply(self, action: Stop | Remove, cid: str) -> bool:
        try:
            after = self.executor.apply(action, self.cache.get(cid))
        except (RuntimeOperationError, RuntimeUnavailable) as e:
            log.error("action failed", action=type(action).__name__, model=action.model, error=str(e))
            self._resync_now = True
            return False
        except VerificationError:   # pragma: no cover - only create/recreate verify
            raise
        self._store(cid, after)
        return True

    def _bring_up(self, action: Create | Recreate | Start) -> None:
        model = action.model
        slot = self.slots[model]
        now = self.clock()
        t = slot.lc.start_attempt(now, reason=_start_reason(action))
        self._log_transition(t)
        if t is not None and t.from_state in (State.EXITED, State.BACKOFF):
            self.metrics.restart(model, slot.lc.reason)
        old = action.old_id if isinstance(action, Recreate) else None
        cid = action.container_id if isinstance(action, Start) else old
        try:
            after = self.executor.apply(action, self.cache.get(cid) if cid else None)
        except VerificationError as e:
            what = "model" if "model" in type(e).__name__.lower() else "image"
            self.metrics.verification_failure(model, what)
            log.error("verification failed; start refused", model=model, error=str(e))
            self._log_transition(slot.lc.start_failed(self.clock(), f"verification failed: {e}", permanent=True))
            return
        except (RuntimeOperationError, RuntimeUnavailable) as e:
            log.error("start failed", model=model, error=str(e))
            self._resync_now = True
            self._log_transition(slot.lc.start_failed(self.clock(), f"docker: {e}", permanent=False))
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
        slot.lc.container_started(self.clock())
        if after.status not in UP:
            self._log_transition(slot.lc.container_exited(
                self.clock(), exit_code=after.exit_code, oom_killed=after.oom_killed,
                log_tail=_last_lines(self.runtime.log_tail(after.id, lines=5), 3)))

    def _store(self, cid: str, after: ObservedContainer | None) -> None:
        if after is None:
            self.cache.pop(cid, None)
        else:
            self.cache[cid] = after

    def _send_probes(self, now: float) -> None:
        for name, slot in self.slots.items():
            lc = slot.lc
            if not lc.live or lc.state is State.STOPPING or slot.container_id is None or not lc.probe_due(now):
                continue
            spec = slot.desired.spec
            if self.prober.submit(name, slot.container_id, host_ip=spec.host_ip, port=spec.host_port,
                                  timeout_s=slot.desired.health.timeout_s):
                lc.probe_sent(now)

    # --- commands ------------------------------------------------------------------------------

    def _names(self, names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if "all" in names:
            return tuple(sorted(self.slots)), ()
        return tuple(n for n in names if n in self.slots), tuple(n for n in names if n not in self.slots)

    def _on_command(self, cmd: Command, fut: Future[CommandResult]) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        now = self.clock()
        match cmd:
            case StartModels(names=names, wait=wait) | RestartModels(names=names, wait=wait):
                known, unknown = self._names(names)
                for n in known:
                    lc = self.slots[n].lc
                    if isinstance(cmd, RestartModels) and lc.live:
                        self._log_transition(lc.stop_requested(now, disable=False, reason="restart requested"))
                    else:
                        self._log_transition(lc.start_requested(now))
                if wait and known:
                    self._waiters.append(Waiter("start", known, fut, now + self.settings.command_timeout_s,
                                                unknown))
                else:
                    fut.set_result(CommandResult(ok=not unknown, results=tuple(
                        ModelResult(n, True, "starting") for n in known), unknown=unknown))
            case StopModels(names=names):
                known, unknown = self._names(names)
                for n in known:
                    self._log_transition(self.slots[n].lc.stop_requested(now))
                self._waiters.append(Waiter("stop", known, fut, now + self.settings.command_timeout_s, unknown))
            case Reread():
                d = self._reload(apply=False, origin="reread")
                fut.set_result(_diff_result(d, self.problems))
            case Update():
                d = self._reload(apply=True, origin="update")
                fut.set_result(_diff_result(d, self.problems))
            case Reload():
                d = self._reload(apply=True, origin="reload")
                self._after_reconcile.append((fut, _diff_result(d, self.problems)))
            case Shutdown(stop_models=stop_models):
                self._begin_shutdown(stop_models=stop_models)
                fut.set_result(CommandResult(ok=True))
            case _:
                assert_never(cmd)

    def _check_waiters(self, now: float) -> None:
        keep: list[Waiter] = []
        for w in self._waiters:
            results: list[ModelResult] = []
            pending = False
            for n in w.names:
                slot = self.slots.get(n)
                if slot is None:
                    results.append(ModelResult(n, False, "disappeared from the manifests"))
                    continue
                st = slot.lc.state
                if w.kind == "start":
                    if st is State.RUNNING:
                        results.append(ModelResult(n, True, "started"))
                    elif st in (State.FATAL, State.BACKOFF, State.EXITED):
                        results.append(ModelResult(n, False, f"{st.name}: {slot.lc.reason}"))
                    else:
                        pending = True
                else:
                    if st in (State.STOPPED, State.FATAL, State.EXITED, State.BACKOFF):
                        results.append(ModelResult(n, True, "stopped"))
                    else:
                        pending = True
            if pending and now < w.deadline:
                keep.append(w)
                continue
            if pending:
                results.append(ModelResult(",".join(w.names), False, "timed out waiting"))
            w.future.set_result(CommandResult(ok=all(r.ok for r in results) and not w.unknown,
                                              results=tuple(results), unknown=w.unknown))
        self._waiters = keep

    # --- shutdown ------------------------------------------------------------------------------

    def _begin_shutdown(self, *, stop_models: bool) -> None:
        self.stopping = True
        self._stop_models_on_exit = stop_models
        self.notifier.stopping()

    def _shutdown_steps(self) -> None:
        stop_models = getattr(self, "_stop_models_on_exit", self.settings.stop_models_on_exit)
        for w in self._waiters:
            w.future.set_result(CommandResult(ok=False, error="daemon shutting down"))
        self._waiters.clear()
        for fut, result in self._after_reconcile:
            fut.set_result(result)
        self._after_reconcile.clear()
        while True:       # fail commands that arrived after the signal
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                break
            if isinstance(ev, ControlRequest) and ev.future.set_running_or_notify_cancel():
                ev.future.set_result(CommandResult(ok=False, error="daemon shutting down"))
        if not stop_models:
            log.info("leaving model containers running", models=sorted(self.slots))
            return
        for name, slot in sorted(self.slots.items()):
            cid = slot.container_id
            if cid is None:
                continue
            log.info("stopping model", model=name, container=cid[:12], timeout_s=self.settings.stop_timeout_s)
            try:
                self.runtime.stop(cid, timeout_s=self.settings.stop_timeout_s)
                log.info("stopped model", model=name, container=cid[:12])
            except (RuntimeOperationError, RuntimeUnavailable) as e:
                log.error("stop failed; killing", model=name, error=str(e))
                try:
                    self.runtime.kill(cid)
                except (RuntimeOperationError, RuntimeUnavailable) as e2:
                    log.error("kill failed", model=name, error=str(e2))

    # --- reporting -----------------------------------------------------------------------------

    def _log_transition(self, t: Transition | None) -> None:
        if t is None:
            return
        slot = self.slots.get(t.model)
        level = "warning" if t.to_state in (State.BACKOFF, State.FATAL, State.EXITED) else "info"
        where = {}
        if slot and t.to_state is State.RUNNING:     # tell the operator where the model answers
            spec = slot.desired.spec
            host = "127.0.0.1" if spec.host_ip in ("", "0.0.0.0") else spec.host_ip
            where["url"] = f"http://{host}:{spec.host_port}"
        getattr(log, level)("transition", model=t.model, reason=t.reason,
                            container=(slot.container_id or "")[:12] if slot else "",
                            **{"from": t.from_state.name, "to": t.to_state.name}, **where)
        self.metrics.model_state(t.model, t.to_state.name)

    def _remember_failures(self) -> None:
        for name, slot in self.slots.items():      # writes only when an entry changed (statefile.py)
            lc = slot.lc
            self.state.record(name, config_hash=slot.desired.spec.config_hash(), failures=lc.consecutive_failures,
                              fatal=lc.reason if lc.state is State.FATAL else None)

    def _publish(self) -> None:
        now = self.clock()
        statuses = []
        for name, slot in sorted(self.slots.items()):
            c = self.cache.get(slot.container_id) if slot.container_id else None
            statuses.append(ModelStatus(
                name=name, state=slot.lc.state.name, port=slot.desired.spec.host_port,
                container_id=slot.container_id, image_id=c.image_id if c else slot.desired.spec.image_id,
                uptime_s=slot.lc.uptime(now), restarts=slot.lc.restarts,
                last_exit_code=slot.lc.last_exit_code, reason=slot.lc.reason,
            ))
        snap = tuple(statuses)
        with self._snapshot_lock:
            changed = snap != self._snapshot
            self._snapshot = snap
        if changed:
            running = sum(1 for s in snap if s.state == State.RUNNING.name)
            self.notifier.status(f"{running}/{len(snap)} models running")


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


def _diff_result(d: Diff | None, problems: list[str]) -> CommandResult:
    if d is None:
        return CommandResult(ok=False, error="\n".join(problems) or "manifests are invalid")
    results = [ModelResult(n, True, "available") for n in d.added]
    results += [ModelResult(n, True, "changed") for n in d.changed]
    results += [ModelResult(n, True, "disappeared") for n in d.removed]
    return CommandResult(ok=True, results=tuple(results))


def _last_lines(text: str, n: int) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _since_ms(time_ns: int) -> int:
    """Docker's event time is wall clock (the engine's); only used for a log field."""
    return max(0, (time.time_ns() - time_ns) // 1_000_000)
