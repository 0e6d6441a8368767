"""What the loop reports after every pass: the status snapshot and the gateway's routes (`publish`, a pure
function of the slots), the memory each model uses (`MemorySampler`), the failure counts kept across
daemon restarts (`remember_failures`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from supervisor.core.demand import Usage
from supervisor.core.lifecycle import State
from supervisor.core.observed import ObservedContainer
from supervisor.core.routing import Route, route_table
from supervisor.core.status import ModelStatus
from supervisor.daemon.state import Slot, endpoint
from supervisor.daemon.statefile import StateFile

MEMORY_SAMPLE_S = 10.0


def publish(
    slots: Mapping[str, Slot],
    cache: Mapping[str, ObservedContainer],
    usage: Callable[[str], Usage],
    memory: Mapping[str, int | None],
    now: float,
    kv: Mapping[str, tuple[int, int]] | None = None,
    kv_off: str = "off: this daemon keeps no KV cache",
    swaps: Mapping[str, tuple[int, float | None]] | None = None,
    verified: Mapping[str, str] | None = None,
    handovers: Mapping[str, str] | None = None,
) -> tuple[tuple[ModelStatus, ...], dict[str, Route]]:
    """The status snapshot and the route table (every name and alias -> route) for `slots` at `now`.

    `cache` is what the engine last showed (container ID -> container), `usage` the gateway's request
    counts per model, `memory` the bytes each model's container uses (MemorySampler.sample), `kv` the
    tokens and bytes of KV cache each model keeps on disk (None: the daemon keeps none, `kv_off` says why),
    `swaps` each model's swaps so far and the last one's wait, `verified` what was checked before each
    container was created (container ID -> text; Executor.verified), `handovers` the words for each
    start-first recreate under way (model -> text; Handovers.describe).
    """
    statuses, routes = [], []
    for name, slot in sorted(slots.items()):
        lc, serving = slot.lc, slot.desired.serving
        c = cache.get(slot.container_id) if slot.container_id else None
        host, port = endpoint(slot, cache)
        u = usage(name)
        last = u.last_used if u.last_used is not None else None
        ttl_left = None
        if serving.on_demand and lc.state is State.RUNNING:
            ttl_left = max(0.0, (last if last is not None else lc.since) + serving.idle_ttl_s - now)
        kv_tokens, kv_bytes, kv_note = _kv_fields(slot, kv, kv_off)
        statuses.append(ModelStatus(
            name=name, state=lc.state.name, port=port,
            container_id=slot.container_id, image_id=c.image_id if c else slot.desired.spec.image_id,
            uptime_s=lc.uptime(now), restarts=lc.restarts,
            last_exit_code=lc.last_exit_code, reason=lc.reason,
            lifecycle=serving.lifecycle.value, aliases=serving.aliases,
            memory_counted=serving.memory_bytes or None, memory_basis=serving.memory_basis,
            memory_used=memory.get(name),
            idle_s=None if last is None else max(0.0, now - last), ttl_left_s=ttl_left,
            inflight=u.inflight, waiting=u.waiting,
            kv_tokens=kv_tokens, kv_bytes=kv_bytes, kv_note=kv_note,
            swaps=(swaps or {}).get(name, (0, None))[0], swap_wait_s=(swaps or {}).get(name, (0, None))[1],
            failures=lc.consecutive_failures, max_failures=slot.desired.restart.max_failures,
            retry_in_s=max(0.0, lc.backoff_until - now) if lc.state is State.BACKOFF and lc.backoff_until else None,
            verified=_verified(slot.container_id, verified),
            handover=(handovers or {}).get(name, ""),
            load_s=lc.recent_loads[-1] if lc.recent_loads else None,
            held=lc.state is State.STOPPED and _held(name, slot, c, cache),
        ))
        routes.append(Route(
            name=name, state=lc.state, host=host, port=port if lc.live else None,
            aliases=serving.aliases, on_demand=serving.on_demand, enabled=lc.enabled, reason=lc.reason,
            api_key_file=slot.desired.api_key_file, start_timeout_s=slot.desired.health.start_timeout_s,
            max_queue=serving.max_queue,
        ))
    return tuple(statuses), route_table(tuple(routes))


def _held(name: str, slot: Slot, c: ObservedContainer | None, cache: Mapping[str, ObservedContainer]) -> bool:
    """Its container is held ready at its gate: the slot's own, or (after a daemon restart, before its first
    start) one of this model and config found in the engine's list, which that start would take."""
    if c is not None:
        return c.held
    want = slot.desired.spec.config_hash()
    return any(x.held and x.model == name and x.config_hash == want for x in cache.values())


def _verified(container_id: str | None, verified: Mapping[str, str] | None) -> str:
    if container_id is None or verified is None:
        return ""
    return verified.get(container_id, "not checked by this daemon: the container was adopted, its checks were"
                                      " made when it was created")


def _kv_fields(slot: Slot, kv: Mapping[str, tuple[int, int]] | None, off: str) -> tuple[int | None, int | None, str]:
    """(tokens, bytes, note) of the KV cache the model keeps on disk."""
    note = slot.desired.kv.note
    if not slot.desired.kv.keep:
        return None, None, note
    if kv is None:
        return None, None, off
    tokens, nbytes = kv.get(slot.desired.name, (0, 0))
    return tokens, nbytes, note


class MemorySampler:
    """Each running container's memory use, asked of the engine at most every MEMORY_SAMPLE_S."""

    def __init__(self, memory_usage: Callable[[str], int | None]) -> None:
        self._memory_usage = memory_usage
        self._seen: dict[str, tuple[float, int | None]] = {}   # model -> (when sampled, bytes)

    def sample(self, slots: Mapping[str, Slot], now: float) -> dict[str, int | None]:
        """model -> bytes used (None when not running), in name order (the order the engine is asked)."""
        return {name: self._used(name, slot, now) for name, slot in sorted(slots.items())}

    def _used(self, name: str, slot: Slot, now: float) -> int | None:
        if slot.container_id is None or slot.lc.state is not State.RUNNING:
            self._seen.pop(name, None)
            return None
        seen = self._seen.get(name)
        if seen is None or now - seen[0] >= MEMORY_SAMPLE_S:
            seen = (now, self._memory_usage(slot.container_id))
            self._seen[name] = seen
        return seen[1]


def remember_failures(slots: Mapping[str, Slot], state: StateFile) -> None:
    """Record each model's failure count and FATAL reason (the file is written only when an entry changed)."""
    for name, slot in slots.items():
        lc = slot.lc
        state.record(name, config_hash=slot.desired.spec.config_hash(), failures=lc.consecutive_failures,
                     fatal=lc.reason if lc.state is State.FATAL else None)
