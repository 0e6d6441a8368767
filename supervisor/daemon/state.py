"""The types the loop's parts share: settings, a model's slot, a command's waiter, a model's endpoint.

`Supervisor` (loop.py) owns the slots and composes parts, one concern each, as objects: the
manifests (`Manifests`, manifests.py), container events and probes (`ContainerEvents`,
containers.py), control commands (`Commands`, commands.py) and the gateway's requests
(`OnDemandScheduler`, ondemand.py). Each is given the slots (and the container cache) and returns
the transitions for the loop to log; what the loop publishes is `reporting.publish`.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from supervisor.control.api import CommandResult, ModelResult
from supervisor.core.lifecycle import Lifecycle
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import DesiredModel

class ProbeSink(Protocol):
    def submit(self, model: str, container_id: str, *, host_ip: str, port: int, timeout_s: float) -> bool: ...


@dataclass(frozen=True)
class LoopSettings:
    resync_interval_s: float = 30.0
    stop_timeout_s: float = 10.0
    stop_models_on_exit: bool = False
    max_wait_s: float = 5.0            # wake at least this often (systemd watchdog, waiter deadlines)
    command_timeout_s: float = 300.0   # a start/stop waiter gives up after this


@dataclass
class Slot:
    desired: DesiredModel
    lc: Lifecycle
    container_id: str | None = None    # the container the lifecycle tracks
    drain_requests: int = 0             # in flight when its last drain began (metrics)
    recreated: bool = False             # drained and recreated: Demand keeps it draining until the next publish


@dataclass
class Waiter:
    kind: str                           # "start" | "stop"
    names: tuple[str, ...]
    future: Future[CommandResult]
    deadline: float
    unknown: tuple[str, ...] = ()
    attempted: set[str] = field(default_factory=set)
    answered: tuple[ModelResult, ...] = ()  # results known when the command ran (an unload refused)


def endpoint(slot: Slot, cache: Mapping[str, ObservedContainer]) -> tuple[str, int | None]:
    """Where the model answers: its published address, and the port bound now (the engine's pick
    when the manifest gave none)."""
    spec = slot.desired.spec
    host = "127.0.0.1" if spec.host_ip in ("", "0.0.0.0") else spec.host_ip
    c = cache.get(slot.container_id) if slot.container_id else None
    port = c.host_port if c is not None and c.host_port else (spec.host_port or None)
    return host, port
