"""A runtime as the daemon is wired with it: the `RuntimeAdapter`, one per `--runtime`.

It carries what goes with a runtime: its `Runtime`, the `Verifier` run before each create, the
`EventSource` that turns the engine's events into loop events (None where the runtime watches its
own processes), the confinement it reports, and the lock view render renders against (`LockView`:
by name, so the isolated manifest reader, a child process, can take it on its argv).

A new runtime is one folder under runtime/ with a `wire()` that returns one of these, and one line
in runtime/choose.py's table.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from supervisor.artifacts.lock import LockView
from supervisor.artifacts.verify import Verifier
from supervisor.core.events import Event
from supervisor.runtime import Runtime

__all__ = ["EventSource", "LockView", "RuntimeAdapter", "Wire"]


class EventSource(Protocol):
    """The engine's events as loop events (runtime/docker/events.py's DockerEventStream)."""

    @property
    def connected(self) -> threading.Event:
        """Set once the stream is open: the daemon waits for it so no death is missed after the first list."""

    def start(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RuntimeAdapter:
    kind: str                                    # "docker" | "process": the key in choose.py's table
    why: str                                     # how it was chosen, for the start-up log
    runtime: Runtime
    verifier: Verifier
    lock_view: LockView                          # which of the lock's sections render renders against
    events: EventSource | None = None            # None: the runtime watches its models itself
    confinement: dict[str, str] | None = None    # what the runtime confines models with, for the log

    def close(self) -> None:
        """At exit (after the event source is closed): the runtime lets go of its engine; models keep running."""
        self.runtime.close()


class Wire(Protocol):
    """A runtime package's `wire`: builds its adapter (raises RuntimeUnavailable, naming the fix, when it cannot run)."""

    def __call__(self, *, instance: str, lock_path: Path, post: Callable[[Event], None], why: str,
                 standby: int = 0) -> RuntimeAdapter: ...
