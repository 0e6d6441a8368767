"""The manifests as the loop sees them: read them, and apply what changed to the slots (models added,
changed, removed).

An invalid set changes nothing (the last good set is kept, every problem logged with
file:line); `reread` computes the diff without applying it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from supervisor.control.api import MetricsSink
from supervisor.core.lifecycle import Lifecycle, State, Transition
from supervisor.core.planner import Diff, diff
from supervisor.core.spec import DesiredModel
from supervisor.daemon.state import Slot
from supervisor.daemon.statefile import StateFile
from supervisor.errors import ManifestError, SupervisorError

log = structlog.get_logger("supervisor.daemon")

LoadDesired = Callable[[], Mapping[str, DesiredModel]]   # raises ManifestError (or another ConfigError)


@dataclass(frozen=True)
class Reloaded:
    """A reload's outcome: the diff (None: the set is invalid, see Manifests.problems) and the
    lifecycles' transitions, in the order they happened, for the loop to log."""

    diff: Diff | None
    transitions: tuple[Transition, ...] = ()


class Manifests:
    def __init__(self, load_desired: LoadDesired) -> None:
        self.load_desired = load_desired
        self.ok = False                       # no good set yet: plan nothing, remove nothing
        self.problems: list[str] = []         # of the last failed read

    def read(self) -> Mapping[str, DesiredModel] | None:
        self.problems = []
        try:
            return self.load_desired()
        except ManifestError as e:
            self.problems = list(e.problems)
            for problem in e.problems:
                log.error("invalid manifest; keeping the last good set", problem=problem)
        except SupervisorError as e:
            self.problems = [str(e)]
            log.error("manifests not loaded; keeping the last good set", error=str(e))
        return None

    def reload(
        self,
        slots: dict[str, Slot],
        *,
        apply: bool,
        origin: str,
        clock: Callable[[], float],
        rng: random.Random,
        state: StateFile,
        metrics: MetricsSink,
        forget: Callable[[str], None],
    ) -> Reloaded:
        """Read the manifests; with `apply`, add, change and remove the slots to match. `forget(name)`
        is called for each model removed (after its slot is gone); `state` gives an added model the
        failure count a previous daemon left."""
        new = self.read()
        if new is None:
            return Reloaded(None)
        current = {n: s.desired for n, s in slots.items()}
        d = diff(current, new)
        if not apply:
            return Reloaded(d)
        out: list[Transition] = []

        def did(t: Transition | None) -> None:
            if t is not None:
                out.append(t)

        self.ok = True
        now = clock()
        for name in d.removed:
            log.info("model removed from manifests", model=name)
            del slots[name]
            forget(name)
        for name in d.added:
            m = new[name]
            log.info("model added", model=name, source=m.source_file, port=m.spec.host_port)
            # an on-demand model waits for its first request (or is adopted if it is running)
            slots[name] = Slot(m, Lifecycle(name, health=m.health, restart=m.restart, rng=rng,
                                            enabled=not m.serving.on_demand))
            metrics.model_state(name, State.STOPPED.name)
            if (e := state.get(name, m.spec.config_hash())) is not None:   # a previous daemon's count
                did(slots[name].lc.restore(now, failures=e.failures, fatal_reason=e.fatal))
        for name in d.changed:
            m = new[name]
            slot = slots[name]
            log.info("model changed", model=name, source=m.source_file,
                     config_changed=slot.desired.spec != m.spec)
            was_on_demand = slot.desired.serving.on_demand
            slot.desired = m
            did(slot.lc.config_changed(now, health=m.health, restart=m.restart))
            if was_on_demand and not m.serving.on_demand:
                did(slot.lc.start_requested(now, reason="lifecycle changed to always"))
        if not d.empty or origin == "start":
            log.info("manifests applied", origin=origin, added=d.added, changed=d.changed, removed=d.removed)
        return Reloaded(d, tuple(out))
