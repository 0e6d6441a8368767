"""The loop's manifests part on its own: a loader and the slots in; the diff, the slots changed and
the transitions out."""

from __future__ import annotations

import random
from collections.abc import Mapping

from supervisor.control.api import NullMetrics
from supervisor.core.lifecycle import State
from supervisor.core.spec import DesiredModel
from supervisor.daemon.manifests import Manifests
from supervisor.daemon.state import Slot
from supervisor.daemon.statefile import StateFile
from supervisor.errors import ManifestError

from .helpers import desired


def test_reload_adds_and_removes_slots_and_keeps_them_on_an_invalid_set() -> None:
    current: Mapping[str, DesiredModel] | ManifestError = {"a": desired("a"), "b": desired("b")}

    def load() -> Mapping[str, DesiredModel]:
        if isinstance(current, ManifestError):
            raise current
        return current

    m = Manifests(load)
    slots: dict[str, Slot] = {}
    forgotten: list[tuple[str, bool]] = []

    def reload(apply: bool = True) -> object:
        return m.reload(slots, apply=apply, origin="test", clock=lambda: 0.0, rng=random.Random(1),
                        state=StateFile(None), metrics=NullMetrics(),
                        forget=lambda n: forgotten.append((n, n in slots)))

    assert not m.ok
    r = m.reload(slots, apply=True, origin="start", clock=lambda: 0.0, rng=random.Random(1),
                 state=StateFile(None), metrics=NullMetrics(), forget=lambda n: None)
    assert r.diff is not None and r.diff.added == ("a", "b") and r.transitions == ()
    assert m.ok and sorted(slots) == ["a", "b"] and slots["a"].lc.state is State.STOPPED

    current = {"a": desired("a")}
    dry = m.reload(slots, apply=False, origin="reread", clock=lambda: 0.0, rng=random.Random(1),
                   state=StateFile(None), metrics=NullMetrics(), forget=lambda n: None)
    assert dry.diff is not None and dry.diff.removed == ("b",) and sorted(slots) == ["a", "b"]
    reload()
    assert sorted(slots) == ["a"] and forgotten == [("b", False)], "forgotten after its slot is gone"

    current = ManifestError(["m.yaml:3: bad port"])
    assert m.reload(slots, apply=True, origin="x", clock=lambda: 0.0, rng=random.Random(1),
                    state=StateFile(None), metrics=NullMetrics(), forget=lambda n: None).diff is None
    assert m.problems == ["m.yaml:3: bad port"] and sorted(slots) == ["a"]
