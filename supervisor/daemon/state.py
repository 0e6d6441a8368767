"""The loop's state and the types its parts share: settings, a model's slot, a command's waiter.

`Supervisor` (loop.py) composes parts, one concern each. Container events and probes
(`ContainerEvents`, containers.py), control commands (`Commands`, commands.py) and the gateway's
requests (`OnDemandScheduler`, ondemand.py) are objects: given the slots (and the container cache),
they return the transitions for the loop to log. The manifests part (manifests.py) is still a class
over `LoopState`, which declares only what it shares with the loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog

from supervisor.control.api import CommandResult, MetricsSink, Notifier
from supervisor.core.demand import Demand
from supervisor.core.lifecycle import Lifecycle, State, Transition
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import DesiredModel
from supervisor.daemon.statefile import StateFile

if TYPE_CHECKING:
    from supervisor.daemon.ondemand import OnDemandScheduler

log = structlog.get_logger("supervisor.daemon")


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


@dataclass
class Waiter:
    kind: str                           # "start" | "stop"
    names: tuple[str, ...]
    future: Future[CommandResult]
    deadline: float
    unknown: tuple[str, ...] = ()
    attempted: set[str] = field(default_factory=set)


def endpoint(slot: Slot, cache: Mapping[str, ObservedContainer]) -> tuple[str, int | None]:
    """Where the model answers: its published address, and the port bound now (the engine's pick
    when the manifest gave none)."""
    spec = slot.desired.spec
    host = "127.0.0.1" if spec.host_ip in ("", "0.0.0.0") else spec.host_ip
    c = cache.get(slot.container_id) if slot.container_id else None
    port = c.host_port if c is not None and c.host_port else (spec.host_port or None)
    return host, port


class LoopState:
    """What the parts mixed into Supervisor share (assigned in Supervisor.__init__)."""

    notifier: Notifier
    metrics: MetricsSink
    clock: Callable[[], float]
    rng: random.Random
    demand: Demand
    slots: dict[str, Slot]
    cache: dict[str, ObservedContainer]       # container ID -> what we last saw
    ondemand: OnDemandScheduler                 # the gateway's requests waiting for their model
    _load_desired: Callable[[], Mapping[str, DesiredModel]]
    manifests_ok: bool                          # no good set yet: plan nothing, remove nothing
    problems: list[str]                         # of the last failed manifest read
    state: StateFile                            # failure counts and FATAL across daemon restarts
    _ready_sent: bool

    def _endpoint(self, slot: Slot) -> tuple[str, int | None]:
        return endpoint(slot, self.cache)

    def _log_transition(self, t: Transition | None) -> None:
        if t is None:
            return
        slot = self.slots.get(t.model)
        level = "warning" if t.to_state in (State.BACKOFF, State.FATAL, State.EXITED) else "info"
        where = {}
        if slot and t.to_state is State.RUNNING:     # tell the operator where the model answers
            host, port = self._endpoint(slot)
            where["url"] = f"http://{host}:{port}"
        getattr(log, level)("transition", model=t.model, reason=t.reason,
                            container=(slot.container_id or "")[:12] if slot else "",
                            **{"from": t.from_state.name, "to": t.to_state.name}, **where)
        self.metrics.model_state(t.model, t.to_state.name)
