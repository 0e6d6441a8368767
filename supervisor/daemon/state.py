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
from enum import Enum
from typing import Protocol

from supervisor.control.api import CommandResult, ModelResult
from supervisor.core.lifecycle import Lifecycle
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import DesiredModel

class ProbeSink(Protocol):
    def submit(self, model: str, container_id: str, *, host_ip: str, port: int, timeout_s: float) -> bool: ...

    def release(self, host_ip: str, port: int) -> None:
        """Before a graceful stop: close the kept-alive connection to that port (health.Prober)."""


class RecreateMode(str, Enum):
    """How a config change replaces a container that serves (`--recreate`)."""

    START_FIRST = "start-first"   # where possible: the new one starts beside the old, the route moves when healthy
    STOP_FIRST = "stop-first"     # always: drain the old one (new requests wait), stop it, then start the new one


@dataclass(frozen=True)
class LoopSettings:
    resync_interval_s: float = 30.0
    stop_timeout_s: float = 10.0
    stop_models_on_exit: bool = False
    max_wait_s: float = 5.0            # wake at least this often (systemd watchdog, waiter deadlines)
    command_timeout_s: float = 300.0   # a start/stop waiter gives up after this
    recreate: RecreateMode = RecreateMode.START_FIRST


@dataclass
class Handover:
    """One model's start-first recreate (the loop thread's record, on its slot)."""

    old_id: str
    successor_id: str
    config_hash: str                  # the successor's
    started_at: float
    deadline: float                   # not healthy by then: given up (its start timeout)
    next_probe_at: float
    old_memory: tuple[int, int]       # what the old container counts against the budgets meanwhile
    switched: bool = False            # the route is on the successor
    old_port: int | None = None       # the old container's published port (retired in Demand)
    drain_until: float | None = None  # the old container is removed at the latest then
    drain_requests: int = 0           # in flight on the old container at the switch (metrics)
    failed: str = ""                  # why the successor was given up


@dataclass
class Slot:
    desired: DesiredModel
    lc: Lifecycle
    container_id: str | None = None    # the container the lifecycle tracks
    drain_requests: int = 0             # in flight when its last drain began (metrics)
    recreated: bool = False             # drained and recreated: Demand keeps it draining until the next publish
    handover: Handover | None = None    # a start-first recreate under way (daemon/handover.py)
    made_with: DesiredModel | None = None   # what its container was made from (its memory, beside a successor)
    start_first_failed: tuple[str, str] = ("", "")   # (config hash, why): that config goes stop-first


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
