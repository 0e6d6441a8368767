"""Contracts between the daemon loop and its operators' side (socket, systemd, metrics).

The daemon implements `Controller`; the control server calls it from its own
threads. Commands are values; the loop thread executes them and completes the
future. `Notifier` and `MetricsSink` are what the loop reports to; both have
null implementations so the loop runs without systemd or Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from typing import Protocol

# The command values live in the core (supervisor/core/commands.py); re-exported here for callers.
from supervisor.core.commands import (
    Command,
    CommandResult,
    ModelResult,
    Reload,
    Reread,
    RestartModels,
    Shutdown,
    StartModels,
    StopModels,
    Unload,
    Update,
)

from supervisor.core.status import ModelStatus

API_VERSION = "v1"

__all__ = ["API_VERSION", "Command", "CommandResult", "Controller", "MetricsSink", "ModelResult", "Notifier",
           "NullMetrics", "NullNotifier", "Reload", "Reread", "RestartModels", "Shutdown", "StartModels",
           "StopModels", "Unload", "Update"]


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
    def eviction(self, model: str, reason: str) -> None: ...
    def drained(self, model: str, requests: int, timed_out: bool) -> None: ...
    def handover(self, model: str, result: str) -> None: ...
    def swap(self, model: str, wait_s: float) -> None: ...
    def forget(self, model: str) -> None: ...
    def kv_cache(self, model: str, op: str, outcome: str, nbytes: int, seconds: float) -> None: ...
    # the gateway's (from its own thread)
    def gateway_request(self, model: str, code: int) -> None: ...
    def gateway_queue(self, model: str, depth: int) -> None: ...
    def gateway_wait(self, model: str, seconds: float) -> None: ...
    def gateway_bytes(self, model: str, n: int) -> None: ...
    def gateway_stale_retry(self, model: str) -> None: ...


class NullMetrics:
    def model_state(self, model: str, state: str) -> None: pass
    def restart(self, model: str, reason: str) -> None: pass
    def probe(self, model: str, latency_s: float, ok: bool) -> None: pass
    def exit(self, model: str, code: int | None, oom_killed: bool) -> None: pass
    def verification_failure(self, model: str, what: str) -> None: pass
    def reconcile(self, duration_s: float) -> None: pass
    def eviction(self, model: str, reason: str) -> None: pass
    def drained(self, model: str, requests: int, timed_out: bool) -> None: pass
    def handover(self, model: str, result: str) -> None: pass
    def swap(self, model: str, wait_s: float) -> None: pass
    def forget(self, model: str) -> None: pass
    def kv_cache(self, model: str, op: str, outcome: str, nbytes: int, seconds: float) -> None: pass
    def gateway_request(self, model: str, code: int) -> None: pass
    def gateway_queue(self, model: str, depth: int) -> None: pass
    def gateway_wait(self, model: str, seconds: float) -> None: pass
    def gateway_bytes(self, model: str, n: int) -> None: pass
    def gateway_stale_retry(self, model: str) -> None: pass
