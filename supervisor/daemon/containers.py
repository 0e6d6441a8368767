"""The loop's part that hears from containers: engine events (die, pause, OOM...), exits found by a
resync, health probe results, and the probes it sends."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import assert_never

import structlog

from supervisor.core.events import ContainerAction, ContainerEvent, ProbeResult
from supervisor.core.lifecycle import ProbeOutcome, State
from supervisor.core.planner import UP
from supervisor.daemon.state import LoopState, Slot
from supervisor.errors import RetryableError

log = structlog.get_logger("supervisor.daemon")


class ContainerEvents(LoopState):
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
        except RetryableError as e:
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
            now, exit_code=c.exit_code, oom_killed=c.oom_killed, log_tail=last_lines(tail, 3)))

    def _on_probe(self, ev: ProbeResult) -> None:
        slot = self.slots.get(ev.model)
        if slot is None or slot.container_id != ev.container_id:
            return
        if ev.outcome is ProbeOutcome.INCONCLUSIVE:
            # The daemon could not probe (out of descriptors): no verdict on the model, no metric.
            log.warning("probe inconclusive; daemon-side", model=ev.model, detail=ev.detail)
            self._log_transition(slot.lc.probe(self.clock(), ev.outcome, ev.detail))
            return
        self.metrics.probe(ev.model, ev.latency_s, ev.outcome is ProbeOutcome.OK)
        if ev.outcome is not ProbeOutcome.OK and slot.lc.state is State.RUNNING:
            log.info("probe failed", model=ev.model, detail=ev.detail, failures=slot.lc.probe_failures + 1,
                     threshold=slot.lc.health.failures)
        self._log_transition(slot.lc.probe(self.clock(), ev.outcome, ev.detail))

    def _send_probes(self, now: float) -> None:
        for name, slot in self.slots.items():
            lc = slot.lc
            if not lc.live or lc.state is State.STOPPING or slot.container_id is None or not lc.probe_due(now):
                continue
            host, port = self._endpoint(slot)
            if port is None:
                continue                      # not published yet: the next inspect tells the port
            if self.prober.submit(name, slot.container_id, host_ip=host, port=port,
                                  timeout_s=slot.desired.health.timeout_s):
                lc.probe_sent(now)


def last_lines(text: str, n: int) -> str:
    """The last `n` non-blank lines of a container's log, joined on one line (a lifecycle's log tail)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _since_ms(time_ns: int) -> int:
    """Docker's event time is wall clock (the engine's); only used for a log field."""
    return max(0, (time.time_ns() - time_ns) // 1_000_000)
