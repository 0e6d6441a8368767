"""What the loop hears from containers: engine events (die, pause, OOM...), exits found by a resync,
health probe results, and the probes it sends (`ContainerEvents`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import assert_never

import structlog

from supervisor.control.api import MetricsSink
from supervisor.core.events import ContainerAction, ContainerEvent, ProbeResult
from supervisor.core.lifecycle import ProbeOutcome, State, Transition
from supervisor.core.observed import ObservedContainer
from supervisor.core.planner import UP
from supervisor.daemon.state import ProbeSink, Slot, endpoint
from supervisor.errors import RetryableError
from supervisor.runtime import Runtime

log = structlog.get_logger("supervisor.daemon")


@dataclass(frozen=True)
class Heard:
    """What the loop must do after a container event or an exit: log these transitions (in order);
    `resync`: list every container at once (what the engine said cannot be trusted as is)."""

    transitions: tuple[Transition, ...] = ()
    resync: bool = False


def _heard(t: Transition | None) -> Heard:
    return Heard(() if t is None else (t,))


class ContainerEvents:
    """Engine events, exits, probe results and probes, over the slots and the container cache it is
    given (it updates the cache and a slot's container ID; the lifecycles' transitions it returns)."""

    def __init__(self, runtime: Runtime, metrics: MetricsSink, prober: ProbeSink) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.prober = prober

    def on_event(self, ev: ContainerEvent, slots: Mapping[str, Slot], cache: dict[str, ObservedContainer],
                 now: float) -> Heard:
        slot = _slot_of(slots, ev.container_id, ev.model)
        match ev.action:
            case ContainerAction.DIE | ContainerAction.DESTROY:
                if ev.container_id not in cache and slot is None:
                    return Heard()
                # Docker reports our own kills too, possibly after we started the container again
                # in place: ask the engine what the container is now instead of trusting the event.
                return self.refresh_exit(ev.container_id, slots, cache, now, event=ev)
            case ContainerAction.OOM:
                log.warning("container OOM", model=ev.model, container=ev.container_id[:12])
            case ContainerAction.PAUSE:
                if ev.container_id in cache:
                    cache[ev.container_id] = replace(cache[ev.container_id], status="paused")
                if slot is not None:
                    return _heard(slot.lc.hung(now, "container paused (hung): restart"))
            case ContainerAction.UNPAUSE:
                if ev.container_id in cache and cache[ev.container_id].status == "paused":
                    cache[ev.container_id] = replace(cache[ev.container_id], status="running")
            case ContainerAction.READY:
                if slot is not None and slot.lc.state is State.STARTING and slot.lc.announces:
                    log.info("server says it has loaded", model=ev.model, after_s=round(now - slot.lc.started_at, 3))
                    slot.lc.ready_announced(now)    # probed in this pass (send_probes), not at its next poll
            case ContainerAction.START:
                if ev.container_id not in cache and ev.model:
                    return Heard(resync=True)     # someone else started one of ours: look at everything
                if (known := cache.get(ev.container_id)) is not None and known.status == "exited":
                    self._held(ev.container_id, cache)
            case _:
                assert_never(ev.action)
        return Heard()

    def _held(self, container_id: str, cache: dict[str, ObservedContainer]) -> None:
        """A stopped container the engine started: held at its gate by standby (the runtime says `exited`,
        `held`), for `status` to show at once; anything else is left to the next resync, as before."""
        try:
            c = self.runtime.inspect(container_id)
        except RetryableError as e:
            log.warning("inspect failed", container=container_id[:12], error=str(e))
            return
        if c is not None and c.held:
            cache[container_id] = c

    def refresh_exit(self, container_id: str, slots: Mapping[str, Slot], cache: dict[str, ObservedContainer],
                     now: float, *, event: ContainerEvent | None) -> Heard:
        """Re-inspect a container that died (or vanished) and tell its lifecycle."""
        try:
            c = self.runtime.inspect(container_id)
        except RetryableError as e:
            log.warning("inspect failed", container=container_id[:12], error=str(e))
            return Heard(resync=True)
        if c is None:
            old = cache.pop(container_id, None)
            model = old.model if old else (event.model if event else "")
            slot = _slot_of(slots, container_id, model)
            if slot is not None:
                slot.container_id = None
                self.metrics.exit(model, event.exit_code if event else None, False)
                return _heard(slot.lc.container_exited(
                    now, exit_code=event.exit_code if event else None, log_tail="container was removed"))
            return Heard()
        cache[container_id] = c
        if c.status in UP:
            return Heard()                      # a stale die: it was started again since
        slot = _slot_of(slots, container_id, c.model)
        if slot is None or not slot.lc.live:
            return Heard()
        tail = self.runtime.log_tail(container_id, lines=5) if slot.lc.state is not State.STOPPING else ""
        log.warning("container exited", model=c.model, container=container_id[:12], exit_code=c.exit_code,
                    oom_killed=c.oom_killed,
                    detected_after_ms=_since_ms(event.time_ns) if event and event.time_ns else None)
        self.metrics.exit(c.model, c.exit_code, c.oom_killed)
        return _heard(slot.lc.container_exited(
            now, exit_code=c.exit_code, oom_killed=c.oom_killed, log_tail=last_lines(tail, 3)))

    def on_probe(self, ev: ProbeResult, slots: Mapping[str, Slot], now: float) -> Transition | None:
        slot = slots.get(ev.model)
        if slot is None or slot.container_id != ev.container_id:
            return None
        if ev.outcome is ProbeOutcome.INCONCLUSIVE:
            # The daemon could not probe (out of descriptors): no verdict on the model, no metric.
            log.warning("probe inconclusive; daemon-side", model=ev.model, detail=ev.detail)
            return slot.lc.probe(now, ev.outcome, ev.detail)
        self.metrics.probe(ev.model, ev.latency_s, ev.outcome is ProbeOutcome.OK)
        if ev.outcome is not ProbeOutcome.OK and slot.lc.state is State.RUNNING:
            log.info("probe failed", model=ev.model, detail=ev.detail, failures=slot.lc.probe_failures + 1,
                     threshold=slot.lc.health.failures)
        return slot.lc.probe(now, ev.outcome, ev.detail)

    def send_probes(self, slots: Mapping[str, Slot], cache: Mapping[str, ObservedContainer], now: float) -> None:
        for name, slot in slots.items():
            lc = slot.lc
            if not lc.live or lc.state is State.STOPPING or slot.container_id is None or not lc.probe_due(now):
                continue
            host, port = endpoint(slot, cache)
            if port is None:
                continue                      # not published yet: the next inspect tells the port
            if self.prober.submit(name, slot.container_id, host_ip=host, port=port,
                                  timeout_s=slot.desired.health.timeout_s):
                lc.probe_sent(now)
            else:
                lc.probe_busy(now)            # one is in flight (maybe the old container's): not a busy loop


def _slot_of(slots: Mapping[str, Slot], container_id: str, model: str) -> Slot | None:
    slot = slots.get(model)
    if slot is None or slot.container_id != container_id:
        return None
    return slot


def last_lines(text: str, n: int) -> str:
    """The last `n` non-blank lines of a container's log, joined on one line (a lifecycle's log tail)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _since_ms(time_ns: int) -> int:
    """Docker's event time is wall clock (the engine's); only used for a log field."""
    return max(0, (time.time_ns() - time_ns) // 1_000_000)
