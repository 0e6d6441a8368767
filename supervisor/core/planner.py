"""The pure planner: desired models and observed containers in, actions out.

No I/O and no clock: what the lifecycle wants right now comes in as `Want.run`.
An unchanged model whose container is running as wanted yields no action, so the
executor makes no Docker call for it. A container that serves requests when its config
changes is drained first (`Drain`: the gateway sends it nothing new, its requests finish),
then recreated; `Want.serving` says where the model's routing stands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from supervisor.core.actions import Action, Create, Drain, Recreate, Remove, Resume, Start, Stop
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import DesiredModel

UP = frozenset({"running", "paused", "restarting"})


class Serving(Enum):
    """Whether the gateway sends requests to the model's container (the loop knows, from the lifecycle
    and the gateway's counts)."""

    NO = "no"                      # not routed to (starting, stopped...): replace it at once
    ROUTED = "routed"              # RUNNING: requests go to it; a replacement drains it first
    DRAINING = "draining"          # drain under way: requests still in flight, before the deadline
    DRAINED = "drained"            # drain over (nothing in flight, or the deadline passed)


@dataclass(frozen=True)
class Want:
    desired: DesiredModel
    run: bool                      # the lifecycle wants a running container now
    live: bool = True              # False: a container still running is the failed/hung one -> kill it first
    serving: Serving = Serving.NO


@dataclass(frozen=True)
class Diff:
    """supervisord's diff_to_active(): what a re-read of the manifests would change."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def diff(old: Mapping[str, DesiredModel], new: Mapping[str, DesiredModel]) -> Diff:
    return Diff(
        added=tuple(sorted(new.keys() - old.keys())),
        changed=tuple(sorted(n for n in new.keys() & old.keys() if new[n] != old[n])),
        removed=tuple(sorted(old.keys() - new.keys())),
    )


def _rank(c: ObservedContainer, want_hash: str | None) -> tuple[bool, bool, str]:
    """Which container to keep when a model has several: matching hash, then running."""
    return (c.config_hash == want_hash, c.status in UP, c.id)


def plan(desired: Mapping[str, Want], observed: Sequence[ObservedContainer]) -> list[Action]:
    by_model: dict[str, list[ObservedContainer]] = {}
    for c in observed:
        by_model.setdefault(c.model, []).append(c)

    actions: list[Action] = []
    for model in sorted(by_model.keys() - desired.keys()):
        for c in sorted(by_model[model], key=lambda c: c.id):
            actions.append(Remove(c.id, f"orphan: no manifest for model {model!r}", model=model))

    for model in sorted(desired):
        want = desired[model]
        want_hash = want.desired.spec.config_hash()
        containers = sorted(by_model.get(model, []), key=lambda c: _rank(c, want_hash), reverse=True)
        for dup in containers[1:]:
            actions.append(Remove(dup.id, f"duplicate container for model {model!r}", model=model))
        current = containers[0] if containers else None
        actions.extend(_plan_one(want, want_hash, current))
    return actions


def _plan_one(want: Want, want_hash: str, current: ObservedContainer | None) -> list[Action]:
    model = want.desired.name
    if current is None:
        return [Create(want.desired)] if want.run else []
    up = current.status in UP
    draining = want.serving in (Serving.DRAINING, Serving.DRAINED)
    if current.config_hash != want_hash:
        if want.run:
            if up and want.serving is Serving.ROUTED:
                return [Drain(model, current.id)]
            if up and want.serving is Serving.DRAINING:
                return []
            return [Recreate(want.desired, current.id)]
        return [Stop(model, current.id, "not wanted running (config changed)")] if up else []
    if up:
        if not want.run:
            reason = "failed or hung: stopped before restart" if not want.live else "stop requested"
            return [Stop(model, current.id, reason, kill=not want.live)]
        if not want.live:
            return [Stop(model, current.id, "failed or hung: restart in place", kill=True),
                    Start(model, current.id, want.desired)]
        return [Resume(model, current.id)] if draining else []
    return [Start(model, current.id, want.desired)] if want.run else []
