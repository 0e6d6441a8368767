"""The pure planner: desired models and observed containers in, actions out.

No I/O and no clock: what the lifecycle wants right now comes in as `Want.run`.
An unchanged model whose container is running as wanted yields no action, so the
executor makes no Docker call for it. A container that serves requests when its config
changes is drained first (`Drain`: the gateway sends it nothing new, its requests finish),
then recreated; `Want.serving` says where the model's routing stands.

Start-first (`Want.start_first`, decided by the loop: a port the engine picks, a runtime that runs two
containers of a model, room in the memory budget for both): the new container is created beside the
old one that serves (`CreateSuccessor`); while it starts (`Want.handover`) neither is removed as a
duplicate; once the loop has switched the route to it, the old one drains its own requests and is
removed (`Remove`, a graceful stop). A successor that failed, or whose config is no longer wanted, is
removed, and the model is planned as if none had been started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from supervisor.core.actions import Action, Create, CreateSuccessor, Drain, Recreate, Remove, Resume, Start, Stop
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import DesiredModel

UP = frozenset({"running", "paused", "restarting"})
# A container stopped before its first /health 200 has answered nothing and holds no KV cache, and
# llama-server, PID 1 in its container, ignores SIGTERM until its handler is set after the load: a graceful
# stop would wait out the whole stop timeout (measured: 10.07 s and exit 137, against 0.15 s once loaded).
LOADING = "still loading: nothing to save, SIGKILL (llama-server ignores SIGTERM until loaded)"


class Serving(Enum):
    """Whether the gateway sends requests to the model's container (the loop knows, from the lifecycle
    and the gateway's counts)."""

    NO = "no"                      # not routed to (starting, stopped...): replace it at once
    ROUTED = "routed"              # RUNNING: requests go to it; a replacement drains it first
    DRAINING = "draining"          # drain under way: requests still in flight, before the deadline
    DRAINED = "drained"            # drain over (nothing in flight, or the deadline passed)


@dataclass(frozen=True)
class Handover:
    """A start-first recreate under way, as the loop records it: `old_id` serves (or, once `switched`,
    drains), `successor_id` is the new container (the desired config)."""

    old_id: str
    successor_id: str
    switched: bool = False         # the route is on the successor; the old one drains its own requests
    drained: bool = False          # switched, and the old one's requests are done (or its deadline passed)
    failed: str = ""               # the successor did not become healthy (why): remove it, stop-first instead


@dataclass(frozen=True)
class Want:
    desired: DesiredModel
    run: bool                      # the lifecycle wants a running container now
    live: bool = True              # False: a container still running is the failed/hung one -> kill it first
    loaded: bool = True            # False: its container has not answered /health 200 since it started
    serving: Serving = Serving.NO
    start_first: bool = False      # a config change may start the new container beside the one that serves
    handover: Handover | None = None


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
        if want.handover is not None:
            actions.extend(_plan_handover(want, want_hash, containers, want.handover))
            continue
        for dup in containers[1:]:
            actions.append(Remove(dup.id, f"duplicate container for model {model!r}", model=model))
        current = containers[0] if containers else None
        actions.extend(_plan_one(want, want_hash, current))
    return actions


def _plan_handover(want: Want, want_hash: str, containers: list[ObservedContainer], h: Handover) -> list[Action]:
    """A model with a start-first recreate under way: the two containers of the handover are kept (not
    duplicates) until it ends; any other one is a duplicate."""
    model = want.desired.name
    by_id = {c.id: c for c in containers}
    old, successor = by_id.get(h.old_id), by_id.get(h.successor_id)
    actions: list[Action] = [Remove(c.id, f"duplicate container for model {model!r}", model=model)
                             for c in containers if c.id not in (h.old_id, h.successor_id)]
    if h.switched:
        # The route is on the successor: the old container drains its own requests, then goes.
        if old is not None and (h.drained or old.status not in UP):
            actions.append(Remove(old.id, "handed over to the new container: drained", model=model))
        elif old is not None and successor is not None and successor.config_hash != want_hash:
            return actions             # changed again while the old one drains: one handover at a time
        return actions + _plan_one(want, want_hash, successor)
    why = _give_up(want, want_hash, successor, h)
    if not why:
        return actions                 # the successor starts beside the old one, which serves: wait
    if successor is not None:
        actions.append(Remove(successor.id, why, model=model))
    return actions + _plan_one(want, want_hash, old)


def _give_up(want: Want, want_hash: str, successor: ObservedContainer | None, h: Handover) -> str:
    """Why a successor that is not serving yet is given up ('' while it is still wanted)."""
    if h.failed:
        return f"start-first: the new container failed ({h.failed}); stop-first instead"
    if successor is None or successor.status not in UP:
        return "start-first: the new container is gone"
    if successor.config_hash != want_hash:
        return "start-first: the manifest changed again; starting over"
    if not want.run or want.serving is not Serving.ROUTED:
        return "start-first: the old container no longer serves"
    return ""


def _plan_one(want: Want, want_hash: str, current: ObservedContainer | None) -> list[Action]:
    model = want.desired.name
    if current is None:
        return [Create(want.desired)] if want.run else []
    up = current.status in UP
    draining = want.serving in (Serving.DRAINING, Serving.DRAINED)
    if current.config_hash != want_hash:
        if want.run:
            if up and want.serving is Serving.ROUTED:
                if want.start_first:
                    return [CreateSuccessor(want.desired, current.id)]
                return [Drain(model, current.id)]
            if up and want.serving is Serving.DRAINING:
                return []
            return [Recreate(want.desired, current.id, kill_old=up and not want.loaded)]
        if not up:
            return []
        if not want.loaded:
            return [Stop(model, current.id, f"not wanted running (config changed); {LOADING}", kill=True)]
        return [Stop(model, current.id, "not wanted running (config changed)")]
    if up:
        if not want.run:
            if want.live and not want.loaded:
                return [Stop(model, current.id, f"stop requested; {LOADING}", kill=True)]
            reason = "failed or hung: stopped before restart" if not want.live else "stop requested"
            return [Stop(model, current.id, reason, kill=not want.live)]
        if not want.live:
            return [Stop(model, current.id, "failed or hung: restart in place", kill=True),
                    Start(model, current.id, want.desired)]
        return [Resume(model, current.id)] if draining else []
    return [Start(model, current.id, want.desired)] if want.run else []
