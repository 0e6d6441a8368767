"""The daemon's own events for the Logs page, read off successive status snapshots: a model added or
removed by a manifest change, every change of state with its reason (an eviction says so in its reason).
Pure; the ring keeps the last `size`. Changes quicker than the console looks (every TICK_S) are seen
as one: the page shows where a model went, and the daemon's log keeps every step."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from supervisor.core.status import ModelStatus


@dataclass(frozen=True)
class DaemonEvent:
    at: float              # wall clock
    model: str
    kind: str              # manifest | transition | eviction
    text: str

    def row(self, fmt: str = "%H:%M:%S") -> list[str]:
        import time

        return [time.strftime(fmt, time.localtime(self.at)), self.model, self.kind, self.text]


def changes(before: dict[str, ModelStatus], after: Iterable[ModelStatus], at: float) -> list[DaemonEvent]:
    out: list[DaemonEvent] = []
    seen: set[str] = set()
    for m in after:
        seen.add(m.name)
        old = before.get(m.name)
        if old is None:
            out.append(DaemonEvent(at, m.name, "manifest", f"added ({m.state})"))
        elif old.state != m.state:
            kind = "eviction" if "evict" in m.reason.lower() else "transition"
            why = f": {m.reason}" if m.reason else ""
            out.append(DaemonEvent(at, m.name, kind, f"{old.state} → {m.state}{why}"))
    out += [DaemonEvent(at, n, "manifest", "removed") for n in sorted(before) if n not in seen]
    return out


class EventLog:
    def __init__(self, size: int = 200) -> None:
        self._events: deque[DaemonEvent] = deque(maxlen=size)
        self._last: dict[str, ModelStatus] | None = None
        self.version = 0

    def observe(self, statuses: Iterable[ModelStatus], at: float) -> None:
        statuses = list(statuses)
        if self._last is not None:
            new = changes(self._last, statuses, at)
            self._events.extend(new)
            self.version += bool(new)
        self._last = {m.name: m for m in statuses}

    def recent(self) -> list[DaemonEvent]:
        """Newest first."""
        return list(reversed(self._events))
