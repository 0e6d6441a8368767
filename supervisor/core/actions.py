"""What the planner asks the executor to do, as values."""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.core.spec import DesiredModel


@dataclass(frozen=True)
class Create:
    desired: DesiredModel

    @property
    def model(self) -> str:
        return self.desired.name


@dataclass(frozen=True)
class Recreate:
    """The config hash changed: stop and remove the old container, create the new one."""

    desired: DesiredModel
    old_id: str
    kill_old: bool = False          # the old one is still loading: nothing to drain or save (planner.LOADING)

    @property
    def model(self) -> str:
        return self.desired.name


@dataclass(frozen=True)
class CreateSuccessor:
    """The config hash changed on a container that serves, and both fit: create and start the new container
    beside the old one (start-first); the old keeps serving until the loop switches the route to the new
    one, then drains and is removed."""

    desired: DesiredModel
    old_id: str

    @property
    def model(self) -> str:
        return self.desired.name


@dataclass(frozen=True)
class Start:
    """Start the existing container in place (same ID, config hash matches).

    `desired`: what the executor verifies before the start (the model file and the image or binary the
    start uses); not part of the action's identity."""

    model: str
    container_id: str
    desired: DesiredModel | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Stop:
    model: str
    container_id: str
    reason: str
    kill: bool = False             # the container is hung or failed: no graceful stop


@dataclass(frozen=True)
class Drain:
    """The config changed while the container serves: send it nothing new, let its requests finish
    (the loop does it: no runtime call); a Recreate follows once it is drained."""

    model: str
    container_id: str


@dataclass(frozen=True)
class Resume:
    """The config changed back while the container drained: it serves again (no runtime call)."""

    model: str
    container_id: str


@dataclass(frozen=True)
class Remove:
    """An orphan (managed label, no manifest), a duplicate, a start-first successor given up, or the old
    container of a finished handover: stop (gracefully) if needed, then remove."""

    container_id: str
    reason: str
    model: str = ""


Action = Create | Recreate | CreateSuccessor | Start | Stop | Remove | Drain | Resume
