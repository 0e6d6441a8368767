"""The loop's side of the gateway: requests for a model (EnsureRunning), on-demand starts under the
memory budgets, swaps, evictions, idle stops and preloads. Runs on the loop thread only; decisions
come from the pure `core.scheduler` (`plan_pass`), the request counts from the shared `Demand`.

`OnDemandScheduler` owns the requests waiting for their model (their futures, with when each
arrived) and answers them; what it asks of the models (starts, stops) it does to their lifecycles and
returns the transitions, which the loop logs. It reads the slots it is given and no other part of the
loop. A request's future is marked running only as it is answered, so a request the gateway gave up
on (`Future.cancel()`) leaves the queue: no model starts, and none is evicted, for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace

import structlog

from supervisor.control.api import MetricsSink
from supervisor.core import scheduler
from supervisor.core.commands import Readiness, ReadinessCode
from supervisor.core.demand import Demand
from supervisor.core.events import EnsureRunning
from supervisor.core.lifecycle import State, Transition
from supervisor.core.routing import Route
from supervisor.core.scheduler import Admit, Budget, Load, MakeRoom, Refuse, SwapSettings
from supervisor.daemon.state import Slot

log = structlog.get_logger("supervisor.daemon")


@dataclass(frozen=True)
class Waiting:
    future: Future[Readiness]
    since: float                    # when the loop first heard of it (its clock)


@dataclass(frozen=True)
class Swaps:
    """A model's swaps: starts that had to wait for others to make room, and the last such wait."""

    count: int = 0
    last_wait_s: float | None = None
    max_wait_s: float | None = None


class OnDemandScheduler:
    def __init__(self, demand: Demand, budget: Budget, metrics: MetricsSink,
                 swap: SwapSettings = SwapSettings()) -> None:
        self.demand = demand
        self.budget = budget
        self.metrics = metrics
        self.swap = swap
        self._pending: dict[str, list[Waiting]] = {}   # model -> requests waiting for it, in arrival order
        self._cutoff: dict[str, float] = {}            # held models: only requests that arrived before are let in
        self._room_for: set[str] = set()               # targets others were asked to make room for
        self._upcoming: list[str] = []                 # targets whose room a stop is making now (take_upcoming)
        self._held_for: set[str] = set()               # ... or a held model will make once its requests are done
        self._seen_up: set[str] = set()                # models that have held their memory since the daemon began
        self._evicted: set[str] = set()                # ... and that the scheduler stopped since (preload brings them back)
        self._wake_at: float | None = None
        self._last_since = float("-inf")
        self.swaps: dict[str, Swaps] = {}

    @property
    def pending(self) -> frozenset[str]:
        """The models some request is waiting for."""
        return frozenset(self._pending)

    def request(self, ev: EnsureRunning, *, known: bool, stopping: bool, now: float = 0.0) -> None:
        """A gateway request for `ev.model` (`known`: it is in the manifests): answered now, or held."""
        if ev.future.cancelled():
            return
        if stopping:
            _resolve(ev.future, Readiness("shutting_down", "the daemon is shutting down"))
            return
        if not known:
            _resolve(ev.future, Readiness("unknown", f"no model {ev.model!r}"))
            return
        # Arrival stamps strictly increase: two requests never tie, so "older than" is always an order.
        self._last_since = max(now, math.nextafter(self._last_since, math.inf))
        self._pending.setdefault(ev.model, []).append(Waiting(ev.future, self._last_since))

    def _loads(self, slots: Mapping[str, Slot]) -> dict[str, Load]:
        loads = {}
        for name, slot in slots.items():
            lc, serving = slot.lc, slot.desired.serving
            u = self.demand.usage(name)
            reserved = lc.state is State.STOPPING or (lc.enabled and lc.state is not State.FATAL)
            if reserved:
                self._seen_up.add(name)
            eligible = lc.state is State.STOPPED and (name not in self._seen_up or name in self._evicted)
            waiting = [w.since for w in self._pending.get(name, ()) if not w.future.done()]
            # a start-first recreate under way holds the old container's memory beside the new one's
            extra = slot.handover.old_memory if slot.handover is not None else (0, 0)
            loads[name] = Load(
                name=name, on_demand=serving.on_demand, reserved=reserved,
                stopping=lc.state is State.STOPPING,
                memory_bytes=serving.memory_bytes + extra[0], gpu_memory_bytes=serving.gpu_memory_bytes + extra[1],
                inflight=u.inflight, waiting=u.waiting,
                last_used=u.last_used if u.last_used is not None else lc.since,
                waiting_since=min(waiting) if waiting else None, admitted=u.admitted,
                preload=serving.preload and (reserved or eligible),
            )
        return loads

    def room_beside(self, name: str, slots: Mapping[str, Slot], old_memory: tuple[int, int]) -> bool:
        """Whether `name`'s new container fits beside its old one (`old_memory`: bytes, GPU bytes), every
        other model counted as the scheduler counts it. No budget set: always."""
        if self.budget.memory_bytes is None and self.budget.gpu_memory_bytes is None:
            return True
        loads = self._loads(slots)
        loads[name] = replace(loads[name], memory_bytes=slots[name].desired.serving.memory_bytes,
                              gpu_memory_bytes=slots[name].desired.serving.gpu_memory_bytes)
        return scheduler.fits_beside(loads, name, old_memory_bytes=old_memory[0],
                                     old_gpu_memory_bytes=old_memory[1], budget=self.budget)

    def schedule(self, slots: Mapping[str, Slot], now: float) -> list[Transition]:
        """Idle stops, then each waiting request's model, oldest request first: start it, make room, or
        refuse; then preloads. Returns the lifecycles' transitions, in the order they happened."""
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
        for name in list(self._pending):
            waiting = [w for w in self._pending[name] if not w.future.done()]
            if not waiting:
                del self._pending[name]
                self._room_for.discard(name)
                self._held_for.discard(name)
                continue
            self._pending[name] = waiting
            slot = slots.get(name)
            if slot is None:
                self.answer(name, "unknown", f"model {name!r} is no longer in the manifests")
                continue
            lc = slot.lc
            if lc.state is State.FATAL:
                self.answer(name, "fatal", f"model {name!r} is FATAL: {lc.reason}"
                            f" (fix: correct it, then 'llama-supervisorctl start {name}')")
                continue
            if not slot.desired.serving.on_demand and not lc.enabled and lc.state is not State.STOPPING:
                self.answer(name, "stopped", f"model {name!r} was stopped by the operator"
                            f" (fix: 'llama-supervisorctl start {name}', or make it lifecycle: on-demand)")
        loads = self._loads(slots)
        plan = scheduler.plan_pass(loads, self.budget, now, self.swap)
        for d in plan.decisions:
            match d:
                case Refuse(model=name, message=message):
                    log.warning("request refused: the model cannot fit", model=name, reason=message)
                    self.answer(name, "too_big", message)
                case Admit(model=name):
                    self._count_swap(name, loads[name], now)
                    did(self._start(slots[name], now, "requested through the gateway"))
                case MakeRoom(model=name):
                    self._room_for.add(name)
        self._cutoff = dict(plan.holds)
        for victim, cutoff in plan.holds.items():
            target = next((d.model for d in plan.decisions if isinstance(d, MakeRoom) and victim in d.drain), "")
            if scheduler.stoppable(loads[victim], cutoff) and self.demand.try_drain(victim, waiting_ok=True):
                log.info("evicting", model=victim, to_make_room_for=target)
                did(slots[victim].lc.stop_requested(now, reason=f"evicted to make room for {target}"))
                if target and target not in self._upcoming:
                    self._upcoming.append(target)
                self.metrics.eviction(victim, "memory")
                self._evicted.add(victim)
            else:
                self.demand.mark_draining(victim)   # new requests wait; stopped once those let in are done
                if target and target not in self._held_for:
                    # its start waits for those requests: the engine's part of it can run meanwhile, once
                    self._held_for.add(target)
                    self._upcoming.append(target)
        for name in plan.preload:
            log.info("preload: starting", model=name)
            did(self._start(slots[name], now, "preload: room is free"))
        self._wake_at = plan.wake_at
        self.demand.set_contended(plan.contended)
        for name in self.demand.draining():
            slot = slots.get(name)
            held = slot is not None and (slot.lc.state in (State.STOPPING, State.DRAINING) or slot.recreated)
            if slot is None or not slot.lc.live or (name not in plan.holds and not held):
                self.demand.undrain(name)
        return out

    def take_upcoming(self) -> list[str]:
        """The models whose start waits only for the stops this pass just asked for (a swap's target), or for
        a held model's admitted requests and then its stop (once per hold), once each: the loop has their
        stopped containers prepared beside those (Runtime.prepare)."""
        out, self._upcoming = self._upcoming, []
        return out

    def _start(self, slot: Slot, now: float, reason: str) -> Transition | None:
        name = slot.desired.name
        self.demand.undrain(name)
        self.demand.touch(name)
        self._evicted.discard(name)
        self._held_for.discard(name)
        log.info("on-demand start", model=name, memory_mib=slot.desired.serving.memory_bytes >> 20, reason=reason)
        return slot.lc.start_requested(now, reason=reason)

    def _count_swap(self, name: str, load: Load, now: float) -> None:
        if name not in self._room_for:
            return
        self._room_for.discard(name)
        wait = max(0.0, now - load.waiting_since) if load.waiting_since is not None else 0.0
        old = self.swaps.get(name, Swaps())
        self.swaps[name] = Swaps(old.count + 1, wait, max(wait, old.max_wait_s or 0.0))
        self.metrics.swap(name, wait)
        log.info("swap", model=name, waited_s=round(wait, 3), policy=self.swap.policy.value)

    def answer_ready(self, routes: Mapping[str, Route]) -> None:
        """After a publish: requests whose model is RUNNING go ahead, with the route just published; of a
        model that makes room for another, only those that arrived before that one's oldest request."""
        draining = self.demand.draining()
        for name in list(self._pending):
            route = routes.get(name)
            if route is None or route.state is not State.RUNNING or route.url is None:
                continue
            cutoff = self._cutoff.get(name)
            if cutoff is None and name in draining:
                continue                      # being stopped: they wait for its next start
            keep = []
            for w in self._pending.pop(name):
                if cutoff is not None and w.since >= cutoff:
                    keep.append(w)
                elif w.future.set_running_or_notify_cancel():
                    self.demand.admit(name)
                    w.future.set_result(Readiness("ok", route=route))
            if keep:
                self._pending[name] = keep

    def answer(self, name: str, code: ReadinessCode, message: str) -> None:
        """Answer every request waiting for `name`."""
        for w in self._pending.pop(name, []):
            _resolve(w.future, Readiness(code, message))
        self._room_for.discard(name)

    def answer_all(self, code: ReadinessCode, message: str) -> None:
        for name in list(self._pending):
            self.answer(name, code, message)

    def forget(self, name: str) -> None:
        for s in (self._seen_up, self._evicted, self._room_for):
            s.discard(name)
        self.swaps.pop(name, None)

    def idle_deadline(self, slots: Mapping[str, Slot]) -> float | None:
        """When the loop must look again: the next on-demand model's idle TTL runs out, or a waiting
        model's grace ends (busy models must then make room for it)."""
        deadlines = [self._wake_at] if self._wake_at is not None else []
        for name, slot in slots.items():
            serving = slot.desired.serving
            if serving.on_demand and not serving.preload and slot.lc.state is State.RUNNING:
                u = self.demand.usage(name)
                if u.inflight == 0 and u.waiting == 0:
                    last = u.last_used if u.last_used is not None else slot.lc.since
                    deadlines.append(last + serving.idle_ttl_s)
        return min(deadlines) if deadlines else None


def _resolve(future: Future[Readiness], answer: Readiness) -> None:
    if future.set_running_or_notify_cancel():
        future.set_result(answer)
