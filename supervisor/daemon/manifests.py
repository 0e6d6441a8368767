"""The loop's part that reads the manifests and applies what changed: models added, changed, removed.

An invalid set changes nothing (the last good set is kept, every problem logged with
file:line); `reread` computes the diff without applying it.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from supervisor.core.lifecycle import Lifecycle, State
from supervisor.core.planner import Diff, diff
from supervisor.core.spec import DesiredModel
from supervisor.daemon.state import LoopState, Slot
from supervisor.errors import ManifestError, SupervisorError

log = structlog.get_logger("supervisor.daemon")


class Manifests(LoopState):
    def _read(self) -> Mapping[str, DesiredModel] | None:
        self.problems = []
        self.notifier.watchdog()    # the read may take up to its deadline (half the watchdog): start it fresh
        try:
            return self._load_desired()
        except ManifestError as e:
            self.problems = list(e.problems)
            for problem in e.problems:
                log.error("invalid manifest; keeping the last good set", problem=problem)
        except SupervisorError as e:
            self.problems = [str(e)]
            log.error("manifests not loaded; keeping the last good set", error=str(e))
        return None

    def _reload(self, *, apply: bool, origin: str) -> Diff | None:
        if origin != "start":
            self.notifier.reloading()
        try:
            new = self._read()
            if new is None:
                return None
            current = {n: s.desired for n, s in self.slots.items()}
            d = diff(current, new)
            if not apply:
                return d
            self.manifests_ok = True
            now = self.clock()
            for name in d.removed:
                log.info("model removed from manifests", model=name)
                del self.slots[name]
                self.metrics.forget(name)
                self.demand.forget(name)
                self.ondemand.answer(name, "unknown", f"model {name!r} was removed from the manifests")
                self.state.forget(name)
            for name in d.added:
                m = new[name]
                log.info("model added", model=name, source=m.source_file, port=m.spec.host_port)
                # an on-demand model waits for its first request (or is adopted if it is running)
                self.slots[name] = Slot(m, Lifecycle(name, health=m.health, restart=m.restart, rng=self.rng,
                                                     enabled=not m.serving.on_demand))
                self.metrics.model_state(name, State.STOPPED.name)
                if (e := self.state.get(name, m.spec.config_hash())) is not None:   # a previous daemon's count
                    self._log_transition(self.slots[name].lc.restore(now, failures=e.failures, fatal_reason=e.fatal))
            for name in d.changed:
                m = new[name]
                slot = self.slots[name]
                log.info("model changed", model=name, source=m.source_file,
                         config_changed=slot.desired.spec != m.spec)
                was_on_demand = slot.desired.serving.on_demand
                slot.desired = m
                self._log_transition(slot.lc.config_changed(now, health=m.health, restart=m.restart))
                if was_on_demand and not m.serving.on_demand:
                    self._log_transition(slot.lc.start_requested(now, reason="lifecycle changed to always"))
            if not d.empty or origin == "start":
                log.info("manifests applied", origin=origin, added=d.added, changed=d.changed, removed=d.removed)
            return d
        finally:
            if origin != "start" and self._ready_sent:
                self.notifier.ready()
