"""Everything that can happen to the daemon, as values on the loop's one queue.

Producers (the manifest watcher, the Docker events stream, the prober, the control
server, the gateway, signal handlers, timers) only build one of these and put it on the queue;
the loop thread dispatches on the type with `match`.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum

from supervisor.core.commands import Command, CommandResult, Readiness
from supervisor.core.lifecycle import ProbeOutcome


@dataclass(frozen=True)
class ManifestsChanged:
    """Re-read every manifest (watchdog saw a change, or SIGHUP)."""

    origin: str = "watcher"


class ContainerAction(Enum):
    START = "start"
    DIE = "die"
    OOM = "oom"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    DESTROY = "destroy"
    READY = "ready"        # the server said it has loaded (the process runtime's servers: readiness.py)


@dataclass(frozen=True)
class ContainerEvent:
    action: ContainerAction
    container_id: str
    model: str
    exit_code: int | None = None
    time_ns: int = 0               # Docker's timeNano


@dataclass(frozen=True)
class ProbeResult:
    model: str
    container_id: str
    outcome: ProbeOutcome
    latency_s: float
    detail: str = ""


@dataclass(frozen=True, eq=False)
class ControlRequest:
    command: Command
    future: Future[CommandResult]


@dataclass(frozen=True, eq=False)
class EnsureRunning:
    """The gateway has a request for `model`: answer when it is RUNNING (starting it, and making room
    under the memory budget, if it is on-demand), or at once if it cannot be."""

    model: str
    future: Future[Readiness]


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class Tick:
    """Wake the loop; `resync` asks for a full list of containers and a plan."""

    resync: bool = False


Event = ManifestsChanged | ContainerEvent | ProbeResult | ControlRequest | EnsureRunning | SignalReceived | Tick
