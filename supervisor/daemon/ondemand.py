"""The loop's side of the gateway: requests for a model (EnsureRunning), on-demand starts under the
memory budgets, evictions and idle stops. Runs on the loop thread only; decisions come from the pure
`core.scheduler`, the request counts from the shared `Demand`.

`OnDemandScheduler` owns the requests waiting for their model (their futures) and answers them; what it
asks of the models (starts, stops) it does to their lifecycles and returns the transitions, which the
loop logs. It reads the slots it is given and no other part of the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future

import structlog

from supervisor.control.api import MetricsSink
from supervisor.core import scheduler
from supervisor.core.commands import Readiness, ReadinessCode
from supervisor.core.demand import Demand
from supervisor.core.events import EnsureRunning
from supervisor.core.lifecycle import State, Transition
from supervisor.core.routing import Route
from supervisor.core.scheduler import Admit, Budget, Load, MakeRoom, Refuse
from supervisor.daemon.state import Slot

log = structlog.get_logger("supervisor.daemon")


class OnDemandScheduler:
    def __init__(self, demand: Demand, budget: Budget, metrics: MetricsSink) -> None:
        self.demand = demand
        self.budget = budget
        self.metrics = metrics
        self._pending: dict[str, list[Future[Readiness]]] = {}   # model -> requests waiting for it, in arrival order

    @property
    def pending(self) -> frozenset[str]:
        """The models some request is waiting for."""
        return frozenset(self._pending)

    def request(self, ev: EnsureRunning, *, known: bool, stopping: bool) -> None:
        """A gateway request for `ev.model` (`known`: it is in the manifests): answered now, or held."""
        if not ev.future.set_running_or_notify_cancel():
            return
        if stopping:
            ev.future.set_result(Readiness("shutting_down", "the daemon is shutting down"))
            return
        if not known:
            ev.future.set_result(Readiness("unknown", f"no model {ev.model!r}"))
            return
        self._pending.setdefault(ev.model, []).append(ev.future)

    def _loads(self, slots: Mapping[str, Slot]) -> dict[str, Load]:
        loads = {}
        for name, slot in slots.items():
            lc, serving = slot.lc, slot.desired.serving
            u = self.demand.usage(name)
            loads[name] = Load(
                name=name, on_demand=serving.on_demand,
                reserved=lc.state is State.STOPPING or (lc.enabled and lc.state is not State.FATAL),
                stopping=lc.state is State.STOPPING,
                memory_bytes=serving.memory_bytes, gpu_memory_bytes=serving.gpu_memory_bytes,
                inflight=u.inflight, waiting=u.waiting,
                last_used=u.last_used if u.last_used is not None else lc.since,
            )
        return loads

    def schedule(self, slots: Mapping[str, Slot], now: float) -> list[Transition]:
        """Idle stops, then each waiting request's model in arrival order: start it, make room, or refuse.
        Returns the lifecycles' transitions, in the order they happened."""
        out: list[Transition] = []

        def did(t: Transition | None) -> None:
            if t is not None:
                out.append(t)

        loads = self._loads(slots)
        ttl = {n: s.desired.serving.idle_ttl_s for n, s in slots.items()}
        for name in scheduler.expired(loads, ttl, now):
            if name not in self._pending and self.demand.try_drain(name):
                log.info("idle: stopping on-demand model", model=name, idle_ttl_s=ttl[name])
                did(slots[name].lc.stop_requested(now, reason=f"idle for {ttl[name]:g}s"))
                self.metrics.eviction(name, "idle")
        wanted_drain: set[str] = set()
        contended = False
        for name in list(self._pending):
            futures = [f for f in self._pending[name] if not f.done()]
            if not futures:
                del self._pending[name]
                continue
            self._pending[name] = futures
            slot = slots.get(name)
            if slot is None:
                self.answer(name, "unknown", f"model {name!r} is no longer in the manifests")
                continue
            lc = slot.lc
            if lc.state is State.FATAL:
                self.answer(name, "fatal", f"model {name!r} is FATAL: {lc.reason}"
                            f" (fix: correct it, then 'llama-supervisorctl start {name}')")
                continue
            loads = self._loads(slots)
            if loads[name].reserved:
                continue                      # starting, restarting or running: the answer comes at RUNNING
            if not slot.desired.serving.on_demand:
                self.answer(name, "stopped", f"model {name!r} was stopped by the operator"
                            f" (fix: 'llama-supervisorctl start {name}', or make it lifecycle: on-demand)")
                continue
            match scheduler.schedule(name, loads, self.budget):
                case Refuse(message=message):
                    log.warning("request refused: the model cannot fit", model=name, reason=message)
                    self.answer(name, "too_big", message)
                case Admit():
                    self.demand.undrain(name)
                    self.demand.touch(name)
                    log.info("on-demand start", model=name, memory_mib=slot.desired.serving.memory_bytes >> 20)
                    did(lc.start_requested(now, reason="requested through the gateway"))
                case MakeRoom(drain=drain):
                    contended = True
                    for victim in drain:
                        wanted_drain.add(victim)
                        if self.demand.try_drain(victim):
                            log.info("evicting", model=victim, to_make_room_for=name)
                            did(slots[victim].lc.stop_requested(now, reason=f"evicted to make room for {name}"))
                            self.metrics.eviction(victim, "memory")
                        else:
                            self.demand.mark_draining(victim)   # stopped once its requests are done
        self.demand.set_contended(contended)
        for name in self.demand.draining():
            slot = slots.get(name)
            held = slot is not None and (slot.lc.state in (State.STOPPING, State.DRAINING) or slot.recreated)
            if slot is None or not slot.lc.live or (name not in wanted_drain and not held):
                self.demand.undrain(name)
        return out

    def answer_ready(self, routes: Mapping[str, Route]) -> None:
        """After a publish: requests whose model is RUNNING go ahead, with the route just published."""
        for name in list(self._pending):
            route = routes.get(name)
            if route is not None and route.state is State.RUNNING and route.url is not None:
                for f in self._pending.pop(name):
                    if not f.done():
                        f.set_result(Readiness("ok", route=route))

    def answer(self, name: str, code: ReadinessCode, message: str) -> None:
        """Answer every request waiting for `name`."""
        for f in self._pending.pop(name, []):
            if not f.done():
                f.set_result(Readiness(code, message))

    def answer_all(self, code: ReadinessCode, message: str) -> None:
        for name in list(self._pending):
            self.answer(name, code, message)

    def idle_deadline(self, slots: Mapping[str, Slot]) -> float | None:
        """When the next on-demand model's idle TTL runs out (the loop wakes then)."""
        deadlines = []
        for name, slot in slots.items():
            if slot.desired.serving.on_demand and slot.lc.state is State.RUNNING:
                u = self.demand.usage(name)
                if u.inflight == 0 and u.waiting == 0:
                    last = u.last_used if u.last_used is not None else slot.lc.since
                    deadlines.append(last + slot.desired.serving.idle_ttl_s)
        return min(deadlines) if deadlines else None
