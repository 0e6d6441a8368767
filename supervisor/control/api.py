"""Contracts between the daemon loop and its operators' side (socket, systemd, metrics).

The daemon implements `Controller`; the control server calls it from its own
threads. Commands are values; the loop thread executes them and completes the
future. `Notifier` and `MetricsSink` are what the loop reports to; both have
null implementations so the loop runs without systemd or Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from supervisor.core.status import ModelStatus

API_VERSION = "v1"


# --- commands (control socket -> loop) -------------------------------------------------------

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


Command = StartModels | StopModels | RestartModels | Reread | Update | Reload | Shutdown


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


class Controller(Protocol):
    def status(self, names: tuple[str, ...] = ()) -> list[ModelStatus]:
        """A consistent snapshot; safe from any thread. Unknown names are left out."""

    def submit(self, command: Command) -> Future[CommandResult]:
        """Queue a command for the loop thread."""

    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        """The model container's log. Raises ControlError for an unknown name."""

    def pid(self) -> int: ...


# --- what the loop reports to ----------------------------------------------------------------

class Notifier(Protocol):
    def ready(self) -> None: ...
    def watchdog(self) -> None: ...
    def status(self, text: str) -> None: ...
    def reloading(self) -> None: ...
    def stopping(self) -> None: ...


class NullNotifier:
    def ready(self) -> None: pass
    def watchdog(self) -> None: pass
    def status(self, text: str) -> None: pass
    def reloading(self) -> None: pass
    def stopping(self) -> None: pass


class MetricsSink(Protocol):
    def model_state(self, model: str, state: str) -> None: ...
    def restart(self, model: str, reason: str) -> None: ...
    def probe(self, model: str, latency_s: float, ok: bool) -> None: ...
    def exit(self, model: str, code: int | None, oom_killed: bool) -> None: ...
    def verification_failure(self, model: str, what: str) -> None: ...
    def reconcile(self, duration_s: float) -> None: ...
    def forget(self, model: str) -> None: ...


class NullMetrics:
    def model_state(self, model: str, state: str) -> None: pass
    def restart(self, model: str, reason: str) -> None: pass
    def probe(self, model: str, latency_s: float, ok: bool) -> None: pass
    def exit(self, model: str, code: int | None, oom_killed: bool) -> None: pass
    def verification_failure(self, model: str, what: str) -> None: pass
    def reconcile(self, duration_s: float) -> None: pass
    def forget(self, model: str) -> None: pass
