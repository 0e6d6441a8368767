"""Which container the planner keeps, and what a GPU request asks the engine for (issue 22's
survivors at core/planner.py and runtime/docker.py)."""

from __future__ import annotations

from dataclasses import replace

from supervisor.core.actions import Remove, Start
from supervisor.core.planner import Want, plan
from supervisor.core.spec import GpuRequest
from supervisor.runtime.docker.runtime import host_config_kwargs

from .helpers import desired, observed


def test_a_stopped_container_with_the_wanted_hash_is_kept_over_a_running_stale_one() -> None:
    d = desired("a")
    stale = observed(d, cid="c-running-stale", status="running", config_hash="0" * 64)
    wanted = observed(d, cid="c-exited-current", status="exited")
    for order in ([stale, wanted], [wanted, stale]):
        assert plan({"a": Want(d, run=True)}, order) == [
            Remove("c-running-stale", "duplicate container for model 'a'", model="a"),
            Start("a", "c-exited-current"),
        ]


def test_among_containers_with_the_wanted_hash_the_running_one_is_kept() -> None:
    d = desired("a")
    up, down = observed(d, cid="c-1", status="running"), observed(d, cid="c-2", status="exited")
    assert plan({"a": Want(d, run=True)}, [down, up]) == [
        Remove("c-2", "duplicate container for model 'a'", model="a")]


def test_gpu_requests_name_their_devices_or_ask_for_all() -> None:
    some = replace(desired("g").spec, gpu=GpuRequest(vendor="nvidia", device_ids=("0", "2")))
    (req,) = host_config_kwargs(some)["device_requests"]
    assert (req["DeviceIDs"], req["Count"]) == (["0", "2"], 0), "named devices only, not every GPU"
    every = replace(desired("g").spec, gpu=GpuRequest(vendor="nvidia"))
    (req,) = host_config_kwargs(every)["device_requests"]
    assert (req["DeviceIDs"], req["Count"]) == ([], -1), "no IDs: all GPUs"
    assert req["Driver"] == "nvidia" and req["Capabilities"] == [["gpu"]]
