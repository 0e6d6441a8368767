"""Start-first recreates: the new container starts beside the old one that serves, the route moves to it
once it is healthy, then the old one drains what is in flight on it and goes (`Handovers`).

Whether a config change may go start-first is decided here each pass (`why_not`: the daemon's
`--recreate`, a port the engine picks, a runtime that runs two containers of a model, room in the
memory budgets for both); the pure planner acts on the answer (`Want.start_first`, `Want.handover`).
The model stays RUNNING on the old container throughout: clients wait for nothing. A successor that
exits, or is not healthy by its start timeout, is removed and the change goes stop-first (the
lifecycle then reports any failure as usual). A daemon restarted mid-handover adopts the container
of the new config if it runs and removes the other (the planner's duplicate rule).
"""

from __future__ import annotations

from collections.abc import Mapping
import structlog

from supervisor.control.api import MetricsSink
from supervisor.core import planner
from supervisor.core.actions import CreateSuccessor
from supervisor.core.demand import Demand
from supervisor.core.events import ProbeResult
from supervisor.core.lifecycle import STARTING_PROBE_MIN_S, ProbeOutcome, State, starting_probe_interval
from supervisor.core.observed import ObservedContainer
from supervisor.core.planner import UP
from supervisor.daemon.ondemand import OnDemandScheduler
from supervisor.daemon.state import Handover, ProbeSink, RecreateMode, Slot, endpoint
from supervisor.errors import RetryableError
from supervisor.runtime import Runtime

log = structlog.get_logger("supervisor.daemon")

HANDING_OVER = "manifest changed: new container starting beside the old"


class Handovers:
    def __init__(self, *, runtime: Runtime, demand: Demand, ondemand: OnDemandScheduler, prober: ProbeSink,
                 metrics: MetricsSink, mode: RecreateMode, stop_timeout_s: float) -> None:
        self.runtime = runtime
        self.demand = demand
        self.ondemand = ondemand
        self.prober = prober
        self.metrics = metrics
        self.mode = mode
        self.stop_timeout_s = stop_timeout_s

    # --- what the planner is told ---------------------------------------------------------------

    def why_not(self, slot: Slot, slots: Mapping[str, Slot]) -> str:
        """'' when a config change of this model may start the new container first; else why not."""
        spec = slot.desired.spec
        if self.mode is RecreateMode.STOP_FIRST:
            return "--recreate stop-first"
        if not self.runtime.successors:
            return f"the {self.runtime.kind} runtime runs one container per model"
        if spec.host_port:
            return f"host port {spec.host_port} is fixed in the manifest: two containers cannot bind it"
        if slot.start_first_failed[0] == spec.config_hash():
            return f"the new container failed beside the old one ({slot.start_first_failed[1]})"
        old = (slot.made_with or slot.desired).serving
        if not self.ondemand.room_beside(slot.desired.name, slots, (old.memory_bytes, old.gpu_memory_bytes)):
            return "the memory budget has no room for the old and the new container together"
        return ""

    def start_first(self, slot: Slot, slots: Mapping[str, Slot], cache: Mapping[str, ObservedContainer]) -> bool:
        """Whether the planner may answer a config change with CreateSuccessor (computed only when one is due)."""
        if slot.lc.state is not State.RUNNING or slot.container_id is None:
            return False      # (a handover under way is planned by its record: this is asked when it is given up)
        c = cache.get(slot.container_id)
        if c is None or c.config_hash == slot.desired.spec.config_hash():
            return False
        return not self.why_not(slot, slots)

    def view(self, slot: Slot, now: float) -> planner.Handover | None:
        h = slot.handover
        if h is None:
            return None
        drained = False
        if h.switched:
            left = self.demand.inflight_on(slot.desired.name, h.old_port) if h.old_port else 0
            drained = left == 0 or (h.drain_until is not None and now >= h.drain_until)
        return planner.Handover(h.old_id, h.successor_id, switched=h.switched, drained=drained, failed=h.failed)

    # --- what happened --------------------------------------------------------------------------

    def began(self, slot: Slot, action: CreateSuccessor, after: ObservedContainer, now: float) -> None:
        """The successor was created and started beside the old container."""
        old = (slot.made_with or slot.desired).serving
        health = action.desired.health
        slot.handover = Handover(
            old_id=action.old_id, successor_id=after.id, config_hash=action.desired.spec.config_hash(),
            started_at=now, deadline=now + health.start_timeout_s,
            next_probe_at=now + starting_probe_interval(0.0, health.interval_s, slot.lc.recent_loads),
            old_memory=(old.memory_bytes, old.gpu_memory_bytes))
        slot.lc.handing_over(HANDING_OVER)
        log.info("start-first: new container starting beside the old", model=action.model,
                 container=after.id[:12], name=after.name, old=action.old_id[:12], port=after.host_port,
                 start_timeout_s=health.start_timeout_s)

    def could_not_begin(self, slot: Slot, why: str) -> None:
        """The successor could not be created or started: the change goes stop-first. A container left
        half-made (created, never started) is removed, or the planner would take it for the model's own."""
        spec = slot.desired.spec
        slot.start_first_failed = (spec.config_hash(), why)
        log.warning("start-first: the new container could not be started; stop-first instead",
                    model=slot.desired.name, error=why)
        self.metrics.handover(slot.desired.name, "fell_back")
        try:
            for c in self.runtime.list_managed():
                if c.model == slot.desired.name and c.id != slot.container_id and c.config_hash == spec.config_hash():
                    self.runtime.remove(c.id)
        except RetryableError as e:
            log.warning("start-first: could not clear the half-made container", model=slot.desired.name,
                        error=str(e))

    def on_probe(self, ev: ProbeResult, slots: Mapping[str, Slot], cache: Mapping[str, ObservedContainer],
                 now: float) -> bool:
        """A probe of a successor (True: handled here). Healthy: the route switches to it now."""
        slot = slots.get(ev.model)
        h = slot.handover if slot is not None else None
        if slot is None or h is None or h.switched or h.failed or ev.container_id != h.successor_id:
            return False
        if ev.outcome is ProbeOutcome.OK and slot.lc.state is State.RUNNING:
            self._switch(slot, h, cache, now)
        elif ev.outcome is not ProbeOutcome.INCONCLUSIVE:
            self.metrics.probe(ev.model, ev.latency_s, False)
        return True

    def _switch(self, slot: Slot, h: Handover, cache: Mapping[str, ObservedContainer], now: float) -> None:
        name = slot.desired.name
        _, h.old_port = endpoint(slot, cache)           # the old container's, before the slot moves
        slot.container_id = h.successor_id
        slot.made_with = slot.desired
        slot.lc.handed_over(now)
        h.switched = True
        h.drain_until = now + self.stop_timeout_s
        h.drain_requests = self.demand.retire(name, h.old_port) if h.old_port else 0
        _, port = endpoint(slot, cache)
        self.metrics.handover(name, "switched")
        log.info("start-first: route switched to the new container; draining the old", model=name,
                 container=h.successor_id[:12], port=port, old=h.old_id[:12], old_port=h.old_port,
                 in_flight_on_old=h.drain_requests, started_s=round(now - h.started_at, 3))

    def check(self, slots: Mapping[str, Slot], cache: Mapping[str, ObservedContainer], now: float) -> None:
        """Each pass: a successor that exited, or is not healthy by its deadline, is given up."""
        for slot in slots.values():
            h = slot.handover
            if h is not None and h.switched and h.old_id not in cache:
                self.removed(slot, h.old_id, now)      # the old container went by itself: nothing left to drain
                continue
            if h is None or h.switched or h.failed:
                continue
            c = cache.get(h.successor_id)
            why = ""
            if c is None or c.status not in UP:
                code = c.exit_code if c is not None else None
                why = f"exited with code {code}" if c is not None else "vanished"
                tail = self.runtime.log_tail(h.successor_id, lines=3).strip().replace("\n", " | ") if c else ""
                why += f"; last log: {tail}" if tail else ""
            elif now >= h.deadline:
                why = f"not healthy after {slot.desired.health.start_timeout_s:g}s"
            if why:
                h.failed = why
                slot.start_first_failed = (h.config_hash, why)
                log.warning("start-first: the new container failed; stop-first instead", model=slot.desired.name,
                            container=h.successor_id[:12], reason=why)
                self.metrics.handover(slot.desired.name, "fell_back")
                if c is None:
                    self.removed(slot, h.successor_id, now)    # nothing for the planner to remove

    def removed(self, slot: Slot, container_id: str, now: float) -> None:
        """A Remove the planner asked for was done: a handover that it ends is over."""
        h = slot.handover
        if h is None:
            return
        name = slot.desired.name
        if container_id == h.successor_id and not h.switched:
            if not h.failed:
                self.metrics.handover(name, "cancelled")
            slot.handover = None
            if slot.lc.state is State.RUNNING and slot.lc.reason == HANDING_OVER:
                slot.lc.reason = "healthy"
        elif container_id == h.old_id and h.switched:
            left = self.demand.inflight_on(name, h.old_port) if h.old_port else 0
            log.info("drained" if not left else "drain timed out: stopping with requests in flight", model=name,
                     requests=h.drain_requests, still_in_flight=left, old=h.old_id[:12])
            self.metrics.drained(name, h.drain_requests, timed_out=left > 0)
            if h.old_port:
                self.demand.unretire(name, h.old_port)
            slot.handover = None

    # --- probes and deadlines -------------------------------------------------------------------

    def send_probes(self, slots: Mapping[str, Slot], cache: Mapping[str, ObservedContainer], now: float) -> None:
        for name, slot in slots.items():
            h = slot.handover
            if h is None or h.switched or h.failed or now < h.next_probe_at:
                continue
            c = cache.get(h.successor_id)
            if c is None or not c.host_port:
                continue
            host, _ = endpoint(slot, cache)
            if self.prober.submit(name, h.successor_id, host_ip=host, port=c.host_port,
                                  timeout_s=slot.desired.health.timeout_s):
                h.next_probe_at = now + starting_probe_interval(now - h.started_at, slot.desired.health.interval_s,
                                                                 slot.lc.recent_loads)
            else:
                h.next_probe_at = now + STARTING_PROBE_MIN_S    # the old one's probe is in flight: soon again

    def deadlines(self, slots: Mapping[str, Slot]) -> list[float]:
        out: list[float] = []
        for slot in slots.values():
            h = slot.handover
            if h is None:
                continue
            if not h.switched and not h.failed:
                out += [h.next_probe_at, h.deadline]
            elif h.drain_until is not None:
                out.append(h.drain_until)
        return out

    def describe(self, slot: Slot, cache: Mapping[str, ObservedContainer]) -> str:
        """The status line's words for a handover under way ('' when none)."""
        h = slot.handover
        if h is None:
            return ""
        if not h.switched:
            c = cache.get(h.successor_id)
            port = f" on port {c.host_port}" if c is not None and c.host_port else ""
            return f"new container {h.successor_id[:8]} starting{port} beside the old one (start-first)"
        left = self.demand.inflight_on(slot.desired.name, h.old_port) if h.old_port else 0
        return f"old container {h.old_id[:8]} draining: {left} request(s) still in flight on it"
