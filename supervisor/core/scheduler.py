"""On-demand loading under memory budgets: which model may start, which idle ones make room, which expire.

Pure: the loop hands in each model's `Load` (its lifecycle state, what it counts
against the budgets, the gateway's in-flight and waiting requests, when it was last
used) and acts on the answer. Rules:

- a model is *reserved* while it holds or is about to hold its memory: enabled and
  not FATAL, or STOPPING; reserved models count against the budgets;
- `always` models are never evicted; an on-demand model with requests waiting for it
  is never chosen; one with requests in flight may be chosen, but is only stopped
  (by the loop) once they are done;
- among the rest, idle ones go first, then the least recently used;
- a model that cannot fit even with every on-demand model gone is refused at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Budget:
    memory_bytes: int | None = None        # None: no RAM budget
    gpu_memory_bytes: int | None = None    # None: no GPU memory budget


@dataclass(frozen=True)
class Load:
    name: str
    on_demand: bool
    reserved: bool
    stopping: bool
    memory_bytes: int
    gpu_memory_bytes: int
    inflight: int = 0
    waiting: int = 0
    last_used: float = 0.0


@dataclass(frozen=True)
class Admit:
    model: str


@dataclass(frozen=True)
class Refuse:
    model: str
    message: str


@dataclass(frozen=True)
class MakeRoom:
    """Wait for memory; `drain` are the models to stop for it (possibly none: others are stopping)."""

    model: str
    drain: tuple[str, ...]


Decision = Admit | Refuse | MakeRoom


def _fits(loads: Iterable[Load], target: Load, budget: Budget) -> bool:
    mem = sum(x.memory_bytes for x in loads) + target.memory_bytes
    gpu = sum(x.gpu_memory_bytes for x in loads) + target.gpu_memory_bytes
    return ((budget.memory_bytes is None or mem <= budget.memory_bytes)
            and (budget.gpu_memory_bytes is None or gpu <= budget.gpu_memory_bytes))


def schedule(target: str, loads: Mapping[str, Load], budget: Budget) -> Decision:
    """What to do about a request for `target`, which is not reserved yet."""
    t = loads[target]
    others = [x for x in loads.values() if x.name != target and x.reserved]
    fixed = [x for x in others if not x.on_demand]
    if not _fits(fixed, t, budget):
        return Refuse(target, _too_big(t, fixed, budget))
    if _fits(others, t, budget):
        return Admit(target)
    # Stopping ones free their memory by themselves; choose among the rest, idle first, then LRU.
    held = [x for x in others if x.on_demand and not x.stopping]
    keep = [x for x in others if not (x.on_demand and not x.stopping)]
    candidates = sorted((x for x in held if x.waiting == 0), key=lambda x: (x.inflight > 0, x.last_used))
    drain: list[str] = []
    remaining = [x for x in held if x.waiting > 0]
    for i, victim in enumerate(candidates):
        if _fits([*keep, *remaining, *candidates[i:]], t, budget):
            break
        drain.append(victim.name)
    return MakeRoom(target, tuple(drain))


def _too_big(t: Load, fixed: list[Load], budget: Budget) -> str:
    def part(need: int, limit: int | None, held: int, what: str) -> str | None:
        if limit is None or need + held <= limit:
            return None
        by = f", of which {held // MiB} MiB is held by always-on models" if held else ""
        return f"needs {need // MiB} MiB of {what}; the {what} budget is {limit // MiB} MiB{by}"

    names = ", ".join(sorted(x.name for x in fixed))
    reasons = [r for r in (
        part(t.memory_bytes, budget.memory_bytes, sum(x.memory_bytes for x in fixed), "memory"),
        part(t.gpu_memory_bytes, budget.gpu_memory_bytes, sum(x.gpu_memory_bytes for x in fixed), "GPU memory"),
    ) if r]
    held = f" ({names})" if names else ""
    return (f"model '{t.name}' cannot fit: {'; '.join(reasons)}{held}"
            " (fix: raise --memory-budget / --gpu-memory-budget, lower the model's resources.memory or ctx_size,"
            " or make other models on-demand)")


def expired(loads: Mapping[str, Load], ttl_s: Mapping[str, float], now: float) -> list[str]:
    """On-demand models to stop: reserved, not stopping, nothing in flight or waiting, unused for their TTL."""
    return sorted(
        x.name for x in loads.values()
        if x.on_demand and x.reserved and not x.stopping and x.inflight == 0 and x.waiting == 0
        and now - x.last_used >= ttl_s.get(x.name, float("inf"))
    )
