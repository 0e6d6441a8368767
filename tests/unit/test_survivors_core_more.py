"""Issue 22: survivors of supervisor/core in the run after core/sizes.py and start_deferred joined it:
an adopted container gets the start budget like a started one, and `memory: true` is refused saying why."""

from __future__ import annotations

import random

import pytest

from supervisor.core.lifecycle import Lifecycle, ProbeOutcome, State
from supervisor.core.sizes import parse_memory
from supervisor.core.spec import HealthPolicy, RestartPolicy, RestartSettings
from supervisor.errors import ManifestError
from supervisor.manifest import load_text


def make() -> Lifecycle:
    return Lifecycle("m", health=HealthPolicy(interval_s=2, timeout_s=2, failures=3, start_timeout_s=60.0),
                     restart=RestartSettings(policy=RestartPolicy.ALWAYS, max_failures=5),
                     rng=random.Random(7), jitter=0.0)


def test_an_adopted_container_never_healthy_fails_at_its_start_budget_even_after_an_inconclusive_probe() -> None:
    lc = make()
    lc.start_attempt(0.0)
    lc.probe(1.0, ProbeOutcome.INCONCLUSIVE)            # the daemon could not probe: no verdict, no budget
    lc.stop_requested(2.0)
    lc.container_exited(3.0, exit_code=0, oom_killed=False)
    lc.start_requested(4.0)
    assert lc.state is State.STOPPED
    assert lc.adopt(10.0) is not None and lc.state is State.STARTING
    assert lc.tick(69.0) is None
    t = lc.tick(70.0)                                    # 60 s after the adoption, no good probe
    assert t is not None and t.to_state is State.BACKOFF and t.reason.startswith("not healthy after 60s;"), t


def test_memory_true_is_refused_as_a_boolean_not_read_as_a_size() -> None:
    with pytest.raises(ValueError) as info:
        parse_memory(True)
    assert str(info.value) == "memory must be a size such as 512m or 2g, not a boolean"
    text = ("kind: model\nname: a\nsource:\n  path: /srv/models/a.gguf\n  sha256: " + "1a" * 32 +
            "\nserver:\n  port: 1\nresources:\n  memory: true\n")
    with pytest.raises(ManifestError) as problems:
        load_text(text, name="m.yaml")
    assert problems.value.problems == [
        "m.yaml:9: resources.memory: memory must be a size such as 512m or 2g, not a boolean, got True"
        " (fix: set resources.memory to a memory limit such as 1g or 512m)"]
