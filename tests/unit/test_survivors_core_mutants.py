"""Tests written for mutants `make mutate` found alive in supervisor/core (docs/TESTING.md): exact stop
reasons and orphan order from the planner, the scheduler's refusal text and budget boundaries, and
ModelStatus's JSON round trip."""

from __future__ import annotations

import random

import pytest

from supervisor.core.actions import Remove, Stop
from supervisor.core.lifecycle import Lifecycle, TransitionError
from supervisor.core.planner import Want, plan
from supervisor.core.scheduler import Admit, Budget, Load, MakeRoom, Refuse, expired, schedule
from supervisor.core.spec import HealthPolicy, RestartSettings
from supervisor.core.status import ModelStatus

from .helpers import desired, observed

G, M = 1 << 30, 1 << 20


def test_a_changed_model_not_wanted_running_is_stopped_with_its_reason() -> None:
    old, new = desired("a", ctx=512), desired("a", ctx=1024)
    assert plan({"a": Want(new, run=False)}, [observed(old, cid="c1")]) == [
        Stop("a", "c1", "not wanted running (config changed)")]


def test_a_failed_container_not_to_be_restarted_is_killed_with_its_reason() -> None:
    d = desired("a")
    assert plan({"a": Want(d, run=False, live=False)}, [observed(d, cid="c1")]) == [
        Stop("a", "c1", "failed or hung: stopped before restart", kill=True)]


def test_orphans_are_removed_in_container_id_order() -> None:
    obs = [observed("gone", cid="c3"), observed("gone", cid="c1"), observed("gone", cid="c2")]
    assert [a.container_id for a in plan({}, obs) if isinstance(a, Remove)] == ["c1", "c2", "c3"]


def load(name: str, *, on_demand: bool = True, reserved: bool = False, mem: int = G, gpu: int = 0,
         inflight: int = 0, last_used: float = 0.0) -> Load:
    return Load(name, on_demand, reserved, False, mem, gpu, inflight, 0, last_used)


def test_the_refusal_names_every_budget_exceeded_and_each_always_on_model() -> None:
    ls = {x.name: x for x in (load("t", mem=3 * G, gpu=10 * G),
                              load("b-fixed", on_demand=False, reserved=True, mem=G, gpu=8 * G),
                              load("a-fixed", on_demand=False, reserved=True, mem=G))}
    d = schedule("t", ls, Budget(memory_bytes=4 * G, gpu_memory_bytes=16 * G))
    assert d == Refuse("t", (
        "model 't' cannot fit: needs 3072 MiB of memory; the memory budget is 4096 MiB, of which 2048 MiB is"
        " held by always-on models; needs 10240 MiB of GPU memory; the GPU memory budget is 16384 MiB, of which"
        " 8192 MiB is held by always-on models (a-fixed, b-fixed) (fix: raise --memory-budget /"
        " --gpu-memory-budget, lower the model's resources.memory or ctx_size, or make other models on-demand)"))


def test_the_refusal_without_always_on_models_names_none() -> None:
    d = schedule("t", {"t": load("t", mem=5 * G)}, Budget(memory_bytes=4 * G))
    assert isinstance(d, Refuse) and d.message.startswith(
        "model 't' cannot fit: needs 5120 MiB of memory; the memory budget is 4096 MiB (fix: raise")


def test_exactly_the_budget_fits_for_memory_and_gpu_memory() -> None:
    ls = {x.name: x for x in (load("t", mem=G, gpu=G), load("o", reserved=True, mem=G, gpu=G))}
    assert schedule("t", ls, Budget(memory_bytes=2 * G, gpu_memory_bytes=2 * G)) == Admit("t")
    fixed = {x.name: x for x in (load("t", mem=G), load("f", on_demand=False, reserved=True, mem=G))}
    assert not isinstance(schedule("t", fixed, Budget(memory_bytes=2 * G)), Refuse), "need + held == limit fits"


def test_a_model_with_one_request_in_flight_goes_after_the_idle_ones() -> None:
    ls = {x.name: x for x in (load("t"), load("busy", reserved=True, inflight=1, last_used=0.0),
                              load("idle", reserved=True, last_used=50.0))}
    assert schedule("t", ls, Budget(memory_bytes=2 * G)) == MakeRoom("t", ("idle",))


def test_a_model_without_a_ttl_never_expires() -> None:
    ls = {"a": load("a", reserved=True, last_used=0.0)}
    assert expired(ls, {}, now=1e12) == []


def test_model_status_json_round_trip_keeps_the_aliases() -> None:
    s = ModelStatus(name="m", state="RUNNING", port=1, container_id="c", image_id=None, uptime_s=1.0, restarts=0,
                    last_exit_code=None, reason="", lifecycle="on-demand", aliases=("x", "y"))
    wire = s.to_json()
    assert wire["aliases"] == ["x", "y"]
    assert ModelStatus.from_json(wire) == s
    assert ModelStatus.from_json({**wire, "aliases": None, "from_a_newer_daemon": 1}).aliases == ()


def test_a_refusal_names_only_the_budget_exceeded_when_the_other_is_met_exactly() -> None:
    d = schedule("t", {"t": load("t", mem=4 * G, gpu=20 * G)}, Budget(memory_bytes=4 * G, gpu_memory_bytes=16 * G))
    assert isinstance(d, Refuse) and "GPU memory" in d.message and "of memory;" not in d.message


def test_a_start_in_fatal_or_stopping_is_a_transition_error_naming_the_model_and_state() -> None:
    lc = Lifecycle("m", health=HealthPolicy(), restart=RestartSettings(), rng=random.Random(1))
    lc.restore(0.0, failures=0, fatal_reason="was FATAL")
    with pytest.raises(TransitionError, match=r"^m: start attempted in FATAL$"):
        lc.start_attempt(1.0)
