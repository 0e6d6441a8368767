"""The loop's reporting on plain values: `publish(slots, ...) -> (snapshot, routes)` and the memory sampler."""

from __future__ import annotations

import random
from dataclasses import replace

from supervisor.core.demand import Usage
from supervisor.core.lifecycle import Lifecycle, ProbeOutcome, State
from supervisor.core.spec import DesiredModel, LoadPolicy, Serving
from supervisor.daemon.reporting import MemorySampler, publish
from supervisor.daemon.state import Slot

from .helpers import desired, observed

IDLE = Usage(inflight=0, waiting=0, last_used=None, draining=False)


def slot(d: DesiredModel, *, running_since: float | None = None, cid: str | None = None) -> Slot:
    lc = Lifecycle(d.name, health=d.health, restart=d.restart, rng=random.Random(1),
                   enabled=not d.serving.on_demand)
    if running_since is not None:
        lc.start_requested(running_since)
        lc.start_attempt(running_since)
        lc.container_started(running_since)
        lc.probe(running_since, ProbeOutcome.OK)
        assert lc.state is State.RUNNING
    return Slot(d, lc, container_id=cid)


def test_publish_reports_each_model_and_routes_every_name_and_alias() -> None:
    od = desired("od", port=0, serving=Serving(aliases=("od-alias",), lifecycle=LoadPolicy.ON_DEMAND,
                                               idle_ttl_s=60.0, memory_bytes=1 << 30, memory_basis="limit"))
    off = desired("off", port=9001)
    slots = {"off": slot(off), "od": slot(od, running_since=100.0, cid="c-od")}
    cache = {"c-od": replace(observed(od, cid="c-od"), host_port=41234, image_id="sha256:" + "9" * 64)}
    usage = {"od": Usage(inflight=2, waiting=1, last_used=130.0, draining=False), "off": IDLE}

    snap, routes = publish(slots, cache, usage.__getitem__, {"od": 123, "off": None}, 150.0)

    assert [s.name for s in snap] == ["od", "off"]          # sorted by name
    s = snap[0]
    assert (s.state, s.port, s.container_id, s.image_id) == ("RUNNING", 41234, "c-od", "sha256:" + "9" * 64)
    assert (s.memory_used, s.memory_counted, s.memory_basis) == (123, 1 << 30, "limit")
    assert (s.idle_s, s.ttl_left_s, s.inflight, s.waiting) == (20.0, 40.0, 2, 1)
    assert s.uptime_s == 50.0 and s.lifecycle == "on-demand" and s.aliases == ("od-alias",)
    t = snap[1]
    assert (t.state, t.port, t.container_id, t.memory_used, t.idle_s, t.ttl_left_s) == (
        "STOPPED", 9001, None, None, None, None)
    assert t.image_id == off.spec.image_id                  # no container: the image the manifest pinned
    assert sorted(routes) == ["od", "od-alias", "off"]
    assert routes["od-alias"] is routes["od"]
    assert routes["od"].url == "http://127.0.0.1:41234" and routes["od"].on_demand
    assert routes["off"].port is None and routes["off"].url is None   # not live: nowhere to send


def test_a_stopped_model_whose_container_is_held_at_its_gate_says_so_and_only_while_stopped() -> None:
    od = desired("od", serving=Serving(lifecycle=LoadPolicy.ON_DEMAND, idle_ttl_s=60.0))
    held = replace(observed(od, cid="c"), status="exited", exit_code=0, held=True)
    snap, routes = publish({"od": slot(od, cid="c")}, {"c": held}, lambda _: IDLE, {}, 10.0)
    assert (snap[0].state, snap[0].held) == ("STOPPED", True)
    assert routes["od"].port is None                     # held is not serving: nowhere to send
    plain = replace(held, held=False)
    assert publish({"od": slot(od, cid="c")}, {"c": plain}, lambda _: IDLE, {}, 10.0)[0][0].held is False
    running = publish({"od": slot(od, running_since=0.0, cid="c")}, {"c": held}, lambda _: IDLE, {}, 10.0)[0][0]
    assert (running.state, running.held) == ("RUNNING", False)
    # a new daemon's slot has no container until its first start: one of this model and config is found
    assert publish({"od": slot(od)}, {"c": held}, lambda _: IDLE, {}, 10.0)[0][0].held is True
    other = replace(held, config_hash="another config")
    assert publish({"od": slot(od)}, {"c": other}, lambda _: IDLE, {}, 10.0)[0][0].held is False


def test_publish_ttl_counts_from_running_since_when_never_used() -> None:
    od = desired("od", serving=Serving(lifecycle=LoadPolicy.ON_DEMAND, idle_ttl_s=60.0))
    snap, _ = publish({"od": slot(od, running_since=100.0, cid="c")}, {}, lambda _: IDLE, {}, 130.0)
    assert (snap[0].ttl_left_s, snap[0].idle_s, snap[0].memory_used) == (30.0, None, None)
    assert snap[0].port == 8081          # not in the cache: the manifest's port


def test_memory_sampler_asks_the_engine_at_most_every_ten_seconds_while_running() -> None:
    asked: list[str] = []
    used = iter([100, 200, 300])

    def memory_usage(cid: str) -> int | None:
        asked.append(cid)
        return next(used)

    sampler = MemorySampler(memory_usage)
    m = desired("m")
    running = {"m": slot(m, running_since=0.0, cid="c-m")}
    assert sampler.sample(running, 0.0) == {"m": 100}
    assert sampler.sample(running, 9.9) == {"m": 100}       # sampled again only after 10 s
    assert sampler.sample(running, 10.0) == {"m": 200}
    assert sampler.sample({"m": slot(m)}, 11.0) == {"m": None}   # stopped: not asked, forgotten
    assert sampler.sample(running, 12.0) == {"m": 300}      # running again: asked at once
    assert asked == ["c-m", "c-m", "c-m"]
