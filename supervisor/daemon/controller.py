"""The Controller the control server calls, and the Backend the gateway calls, from their threads:
snapshots and queued commands only."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future

from supervisor.control.api import Command, CommandResult
from supervisor.core.commands import Readiness
from supervisor.core.demand import Demand
from supervisor.core.events import ControlRequest, EnsureRunning
from supervisor.core.routing import Route
from supervisor.core.status import ModelStatus
from supervisor.daemon.loop import Supervisor
from supervisor.errors import ControlError


class DaemonController:
    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        # the web console's login URL, for GET /v1/console (`llama-supervisorctl console`); set by the
        # wiring when a gateway serves the console
        self.console_login: Callable[[], str | None] | None = None

    def status(self, names: tuple[str, ...] = ()) -> list[ModelStatus]:
        snap = self._sup.snapshot()
        if not names or "all" in names:
            return list(snap)
        wanted = set(names)
        return [s for s in snap if s.name in wanted]

    def submit(self, command: Command) -> Future[CommandResult]:
        fut: Future[CommandResult] = Future()
        if self._sup.stopping or self._sup.done.is_set():
            fut.set_result(CommandResult(ok=False, error="daemon shutting down"))
            return fut
        self._sup.post(ControlRequest(command, fut))
        return fut

    # --- the gateway's Backend ------------------------------------------------------------------

    @property
    def demand(self) -> Demand:
        return self._sup.demand

    def routes(self) -> dict[str, Route]:
        return self._sup.routes()

    def published(self) -> bool:
        return self._sup.published.is_set()

    def ensure(self, model: str) -> Future[Readiness]:
        fut: Future[Readiness] = Future()
        if self._sup.stopping or self._sup.done.is_set():
            fut.set_result(Readiness("shutting_down", "the daemon is shutting down"))
            return fut
        self._sup.post(EnsureRunning(model, fut))
        return fut

    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        found = self.status((name,))
        if not found:
            raise ControlError(f"no such model: {name}")
        cid = found[0].container_id
        if cid is None:
            raise ControlError(f"{name}: no container yet ({found[0].state}: {found[0].reason})")
        return self._sup.runtime.logs(cid, lines=lines, follow=follow)

    def runtime(self) -> str:
        """docker or process: the adapter this daemon runs models with."""
        return self._sup.runtime.kind

    def pid(self) -> int:
        return os.getpid()
