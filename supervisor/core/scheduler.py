"""On-demand loading under memory budgets: which model may start, which idle ones make room, which expire,
and when a model that is busy must give up its room to another (swap-aware scheduling).

Pure: the loop hands in each model's `Load` (its lifecycle state, what it counts
against the budgets, the gateway's in-flight and waiting requests, since when its oldest
request waits, when it was last used) and acts on the answer. Rules:

- a model is *reserved* while it holds or is about to hold its memory: enabled and
  not FATAL, or STOPPING; reserved models count against the budgets;
- `always` models are never evicted; one with requests in flight, or with requests that
  waited longer than the target's, may be chosen (last), but is only stopped (by the loop)
  once those are done (`stoppable`): a request is never preempted by a younger one;
- among the rest, idle ones go first, then the least recently used;
- a model that cannot fit even with every on-demand model gone is refused at once.

Swaps (`plan_pass`, every pass of the loop). Targets (on-demand models with requests
waiting and not reserved) are taken oldest request first. A target that fits starts: models
that fit together are never serialised, the budget decides. One that does not fit needs
room from loaded models:

- `batch` (the default): a *busy* loaded model (requests in flight or waiting) keeps
  serving, new requests included, until its queue is empty or the target's oldest request
  has waited `max_swap_wait_s`; an idle one makes room at once.
- `fifo`: strict arrival order: a busy model is held at once; it finishes what arrived
  before the target's oldest request, and the rest waits for its next turn.

A model chosen to make room is *held* with a cutoff (the target's oldest arrival): no new
request enters it, those that arrived before the cutoff are still served, and it is stopped
once nothing is in flight. A target whose room is being made *claims* it: younger targets
may only take what is left. So the oldest waiting request is served within
`max_swap_wait_s`, plus the in-flight requests of the models it needs room from, one stop
and one start: no request starves.

`preload` models that are stopped start when nothing waits for room and they fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

MiB = 1024 * 1024


class SwapPolicy(str, Enum):
    BATCH = "batch"     # serve the loaded model's queue first, swap when it is empty or max_swap_wait_s passed
    FIFO = "fifo"       # strict arrival order (the baseline the benchmark compares with)


@dataclass(frozen=True)
class SwapSettings:
    policy: SwapPolicy = SwapPolicy.BATCH
    # Long enough to finish a loaded model's queue (a few answers of a few seconds on CPU), short
    # enough that a swap's cost (a stop and a cold start, 2-4 s here) stays the larger part of a wait.
    max_swap_wait_s: float = 10.0

    @property
    def grace_s(self) -> float:
        """How long a target lets busy models keep serving before they must make room for it."""
        return 0.0 if self.policy is SwapPolicy.FIFO else self.max_swap_wait_s


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
    waiting_since: float | None = None     # arrival of its oldest request waiting in the loop
    admitted: int = 0                      # requests told to go ahead that have not entered yet
    preload: bool = False                  # start it when room is free and nothing waits (stopped, eligible)

    @property
    def busy(self) -> bool:
        return self.inflight > 0 or self.waiting > 0 or self.admitted > 0 or self.waiting_since is not None


@dataclass(frozen=True)
class Admit:
    model: str


@dataclass(frozen=True)
class Refuse:
    model: str
    message: str


@dataclass(frozen=True)
class MakeRoom:
    """Wait for memory; `drain` are the models to stop for it (possibly none: others are stopping, or busy)."""

    model: str
    drain: tuple[str, ...]


Decision = Admit | Refuse | MakeRoom


def _fits(loads: Iterable[Load], target: Load, budget: Budget) -> bool:
    mem = sum(x.memory_bytes for x in loads) + target.memory_bytes
    gpu = sum(x.gpu_memory_bytes for x in loads) + target.gpu_memory_bytes
    return ((budget.memory_bytes is None or mem <= budget.memory_bytes)
            and (budget.gpu_memory_bytes is None or gpu <= budget.gpu_memory_bytes))


def schedule(target: str, loads: Mapping[str, Load], budget: Budget, *, now: float = 0.0,
             swap: SwapSettings = SwapSettings(), claims: tuple[Load, ...] = (),
             taken: frozenset[str] = frozenset()) -> Decision:
    """What to do about a request for `target`, which is not reserved yet. `claims`: older targets
    whose room is being made (counted as held); `taken`: models already chosen to make room for them."""
    t = loads[target]
    others = [x for x in loads.values() if x.name != target and x.reserved]
    fixed = [x for x in others if not x.on_demand]
    if not _fits(fixed, t, budget):
        return Refuse(target, _too_big(t, fixed, budget))
    if _fits([*others, *claims], t, budget):
        return Admit(target)
    overdue = t.waiting_since is None or swap.grace_s == 0 or now >= t.waiting_since + swap.grace_s

    def evictable(x: Load) -> bool:
        if x.name in taken:
            return False
        if x.waiting > 0 and x.waiting_since is None:
            return False                      # a request is on its way to the loop for it
        return overdue or not x.busy

    def older(x: Load) -> bool:
        return x.waiting_since is not None and (t.waiting_since is None or x.waiting_since < t.waiting_since)

    # Stopping ones (and those taken for older targets) free their memory by themselves; choose among
    # the rest, idle first, then LRU.
    held = [x for x in others if x.on_demand and not x.stopping and x.name not in taken]
    gone = {x.name for x in others if x.stopping or x.name in taken}
    keep = [x for x in others if x.name not in gone and not (x.on_demand and not x.stopping)]
    # A model whose own requests are older than the target's is held all the same: it serves those
    # first (the cutoff), and `stoppable` stops it only after them; it is chosen last.
    candidates = sorted((x for x in held if evictable(x)), key=lambda x: (older(x), x.busy, x.last_used))
    remaining = [x for x in held if not evictable(x)]
    for i in range(len(candidates) + 1):
        if _fits([*keep, *remaining, *candidates[i:], *claims], t, budget):
            return MakeRoom(target, tuple(x.name for x in candidates[:i]))
    return MakeRoom(target, ())               # not enough yet: wait (busy ones finish, or the grace ends)


@dataclass(frozen=True)
class Pass:
    """One pass's decisions, in the order the loop applies them."""

    decisions: tuple[Decision, ...]               # per target, oldest request first
    holds: Mapping[str, float] = field(default_factory=dict)   # model -> cutoff: makes room, serves only older
    preload: tuple[str, ...] = ()                  # preload models to start now
    wake_at: float | None = None                   # a waiting target's grace ends: look again then

    @property
    def contended(self) -> bool:
        return any(isinstance(d, MakeRoom) for d in self.decisions)


def plan_pass(loads: Mapping[str, Load], budget: Budget, now: float, swap: SwapSettings = SwapSettings()) -> Pass:
    """Every waiting target, oldest request first: start, refuse, or make room (see the module's rules)."""
    current = dict(loads)
    targets = sorted((x for x in loads.values() if x.on_demand and not x.reserved and x.waiting_since is not None),
                     key=lambda x: (x.waiting_since, x.name))
    decisions: list[Decision] = []
    holds: dict[str, float] = {}
    claims: list[Load] = []
    wake: list[float] = []
    for t in targets:
        d = schedule(t.name, current, budget, now=now, swap=swap, claims=tuple(claims), taken=frozenset(holds))
        decisions.append(d)
        match d:
            case Admit():
                current[t.name] = replace(t, reserved=True)
            case MakeRoom(drain=drain):
                assert t.waiting_since is not None
                for victim in drain:
                    holds[victim] = t.waiting_since
                due = t.waiting_since + swap.grace_s
                if drain or swap.grace_s == 0 or now >= due:
                    claims.append(t)          # its room is being made (or owed): younger ones take what is left
                else:
                    wake.append(due)
            case Refuse():
                pass
    preload: list[str] = []
    if not claims and not any(isinstance(d, MakeRoom) for d in decisions):
        for x in sorted(loads.values(), key=lambda x: x.name):
            if x.preload and x.on_demand and not x.reserved and x.waiting_since is None:
                others = [y for y in current.values() if y.reserved and y.name != x.name]
                if _fits(others, x, budget):
                    preload.append(x.name)
                    current[x.name] = replace(x, reserved=True)
    return Pass(tuple(decisions), holds, tuple(preload), min(wake) if wake else None)


def fits_beside(loads: Mapping[str, Load], model: str, *, old_memory_bytes: int, old_gpu_memory_bytes: int,
                budget: Budget) -> bool:
    """Whether `model`'s new container (its Load) fits beside its old one (the old estimates), with every
    other reserved model counted as `schedule` counts it: a start-first recreate holds both for a while."""
    new = loads[model]
    old = replace(new, memory_bytes=old_memory_bytes, gpu_memory_bytes=old_gpu_memory_bytes)
    others = [x for x in loads.values() if x.name != model and x.reserved]
    return _fits([*others, old], new, budget)


def stoppable(load: Load, cutoff: float) -> bool:
    """A held model may be stopped now: nothing in flight or let in, and nothing older than the cutoff waits."""
    return (load.inflight == 0 and load.admitted == 0
            and (load.waiting_since is None or load.waiting_since >= cutoff))


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
    """On-demand models to stop: reserved, not stopping, nothing in flight or waiting, unused for their TTL.
    Preload models are kept warm: no idle stop (they are still evicted for room)."""
    return sorted(
        x.name for x in loads.values()
        if x.on_demand and x.reserved and not x.stopping and not x.busy and not x.preload
        and now - x.last_used >= ttl_s.get(x.name, float("inf"))
    )
