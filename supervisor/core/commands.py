"""Commands to the loop thread and their results, as values.

The control socket and the gateway build these; the loop executes them and completes
the future it was handed. They live in the core so that the core imports nothing
from control, daemon, runtime or cli (a layer test holds that).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from supervisor.core.routing import Route


@dataclass(frozen=True)
class StartModels:
    names: tuple[str, ...]          # ("all",) means every model
    wait: bool = True               # reply when RUNNING or failed, not at once


@dataclass(frozen=True)
class StopModels:
    names: tuple[str, ...]


@dataclass(frozen=True)
class RestartModels:
    names: tuple[str, ...]
    wait: bool = True


@dataclass(frozen=True)
class Unload:
    """Stop on-demand models as an idle stop does: only while nothing is in flight, and they stay
    loadable (the next request starts them; their KV cache is saved as on any graceful stop)."""

    names: tuple[str, ...]          # ("all",) means every on-demand model


@dataclass(frozen=True)
class Reread:
    """Parse manifests and report the diff without applying it."""


@dataclass(frozen=True)
class Update:
    """Parse manifests and apply the diff (only what changed)."""


@dataclass(frozen=True)
class Reload:
    """As SIGHUP: re-read everything and apply; replies when the reconcile ran."""


@dataclass(frozen=True)
class Shutdown:
    stop_models: bool = False


Command = StartModels | StopModels | RestartModels | Unload | Reread | Update | Reload | Shutdown

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")   # the manifest's name pattern (manifest.schema)
ACTIONS = ("start", "stop", "restart", "unload")


def command_for(verb: str, names: tuple[str, ...], *,
                wait: bool = True) -> StartModels | StopModels | RestartModels | Unload:
    """The command a start, stop, restart or unload asks the loop for: the control socket's POSTs and the
    web console's buttons both build theirs here (one path for actions). ValueError for another verb."""
    match verb:
        case "start":
            return StartModels(names, wait=wait)
        case "stop":
            return StopModels(names)
        case "restart":
            return RestartModels(names, wait=wait)
        case "unload":
            return Unload(names)
    raise ValueError(f"{verb!r} is not an action (one of: {', '.join(ACTIONS)})")


@dataclass(frozen=True)
class ModelResult:
    name: str
    ok: bool
    message: str                    # "started", "stopped", "available", "changed", "disappeared", or the error


@dataclass(frozen=True)
class CommandResult:
    ok: bool
    results: tuple[ModelResult, ...] = ()
    error: str | None = None        # whole-command error, e.g. invalid manifests with every file:line
    unknown: tuple[str, ...] = field(default=())  # names that match no model


ReadinessCode = Literal["ok", "unknown", "fatal", "stopped", "too_big", "shutting_down"]


@dataclass(frozen=True)
class Readiness:
    """The loop's answer to EnsureRunning: the model is RUNNING at `route`, or why it will not be."""

    code: ReadinessCode
    message: str = ""
    route: Route | None = None

    @property
    def ok(self) -> bool:
        return self.code == "ok"

