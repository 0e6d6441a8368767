"""The loop's part that reports: the status snapshot and the gateway's routes it publishes after every
pass, the memory each model uses, the failure counts kept across daemon restarts."""

from __future__ import annotations

import structlog

from supervisor.core.lifecycle import State
from supervisor.core.routing import Route, route_table
from supervisor.core.status import ModelStatus
from supervisor.daemon.state import LoopState, Slot

log = structlog.get_logger("supervisor.daemon")

MEMORY_SAMPLE_S = 10.0


class Reporting(LoopState):
    def _remember_failures(self) -> None:
        for name, slot in self.slots.items():      # writes only when an entry changed (statefile.py)
            lc = slot.lc
            self.state.record(name, config_hash=slot.desired.spec.config_hash(), failures=lc.consecutive_failures,
                              fatal=lc.reason if lc.state is State.FATAL else None)

    def _publish(self) -> None:
        now = self.clock()
        statuses, routes = [], []
        for name, slot in sorted(self.slots.items()):
            lc, serving = slot.lc, slot.desired.serving
            c = self.cache.get(slot.container_id) if slot.container_id else None
            host, port = self._endpoint(slot)
            u = self.demand.usage(name)
            last = u.last_used if u.last_used is not None else None
            ttl_left = None
            if serving.on_demand and lc.state is State.RUNNING:
                ttl_left = max(0.0, (last if last is not None else lc.since) + serving.idle_ttl_s - now)
            statuses.append(ModelStatus(
                name=name, state=lc.state.name, port=port,
                container_id=slot.container_id, image_id=c.image_id if c else slot.desired.spec.image_id,
                uptime_s=lc.uptime(now), restarts=lc.restarts,
                last_exit_code=lc.last_exit_code, reason=lc.reason,
                lifecycle=serving.lifecycle.value, aliases=serving.aliases,
                memory_counted=serving.memory_bytes or None, memory_basis=serving.memory_basis,
                memory_used=self._memory_used(name, slot, now),
                idle_s=None if last is None else max(0.0, now - last), ttl_left_s=ttl_left,
                inflight=u.inflight, waiting=u.waiting,
            ))
            routes.append(Route(
                name=name, state=lc.state, host=host, port=port if lc.live else None,
                aliases=serving.aliases, on_demand=serving.on_demand, enabled=lc.enabled, reason=lc.reason,
                api_key_file=slot.desired.api_key_file, start_timeout_s=slot.desired.health.start_timeout_s,
                max_queue=serving.max_queue,
            ))
        snap = tuple(statuses)
        table = route_table(tuple(routes))
        with self._snapshot_lock:
            changed = snap != self._snapshot
            self._snapshot = snap
            self._routes = table
        self.published.set()
        self._answer_ready(table)
        if changed:
            running = sum(1 for s in snap if s.state == State.RUNNING.name)
            self.notifier.status(f"{running}/{len(snap)} models running")

    def _memory_used(self, name: str, slot: Slot, now: float) -> int | None:
        """The container's memory use, sampled at most every MEMORY_SAMPLE_S while it runs."""
        if slot.container_id is None or slot.lc.state is not State.RUNNING:
            self._memory_seen.pop(name, None)
            return None
        seen = self._memory_seen.get(name)
        if seen is None or now - seen[0] >= MEMORY_SAMPLE_S:
            seen = (now, self.runtime.memory_usage(slot.container_id))
            self._memory_seen[name] = seen
        return seen[1]
