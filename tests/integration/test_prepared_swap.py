"""A swap's target started ahead, on the real engine, image and demo model (Runtime.prepare, issue 17).

An on-demand model's container is created held (`llama-gate` before llama-server). With --no-standby (or
for a model past --standby-max), in a swap back to a stopped model, the daemon has the engine start that container up to its gate while the
model making room is saved and stopped; llama-server is released only by the start that follows the stop.
A prepared container whose start never comes is stopped again, and so is one still at its gate when the
daemon exits (without standby nothing would end it).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from bench.live import render_one
from supervisor.runtime.docker.runtime import DockerRuntime
from supervisor.runtime.docker.standby import FIFO_TARGET, GATE, Gates

from .daemon_harness import Daemon, container, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture()
def names(docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:6]
    found = {k: f"ps{tag}-{k}" for k in ("a", "b")}
    yield found
    remove_models(docker_client, list(found.values()))


def _at(rec: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(rec["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_a_swap_back_starts_the_stopped_container_up_to_its_gate_beside_the_other_model_s_stop(
        tmp_path: Path, image_record: object, demo_model: Path, names: dict[str, str],
        docker_client: docker.DockerClient) -> None:
    for k in ("a", "b"):
        text = model_yaml(names[k], None, demo_model, demo_model.parent.name, memory="1g",
                          serving="lifecycle: on-demand\n")
        (tmp_path / f"{k}.yaml").write_text(text.replace("health:\n", "health:\n  start_timeout: 120\n", 1))
    d = Daemon(tmp_path, extra=["--memory-budget", "1500m", "--no-standby"]).start()      # room for one
    a, b = names["a"], names["b"]
    try:
        wait_for(lambda: d.model_state(a) == "STOPPED", 60, "the gateway listing the models")
        assert d.chat(a).status_code == 200
        held = container(docker_client, a)
        assert held.attrs["Config"]["Entrypoint"][:2] == [GATE, FIFO_TARGET], "an on-demand container is held"
        assert held.attrs["Config"].get("Healthcheck", {}).get("Test") != ["NONE"], \
            "with --no-standby it keeps the image's HEALTHCHECK"
        fifo = next(m for m in held.attrs["Mounts"] if m["Destination"] == FIFO_TARGET)
        assert fifo["RW"] is False
        assert d.chat(b).status_code == 200                # b is created: nothing to prepare
        assert d.find(lambda r: r.get("event", "").startswith("prepared")) is None

        since = time.monotonic()
        assert d.chat(a).status_code == 200                # evicts b; a's stopped container is prepared
        _, prepared = d.wait_log(lambda r: r.get("event") == "prepared: started up to its gate ahead of its start",
                                 10, "a prepared", since=since)
        assert prepared["container"] == held.name
        _, stopped = d.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == b
                                and r.get("to") == "STOPPED", 10, "b stopped", since=since)
        _, started = d.wait_log(lambda r: r.get("event") == "start in place" and r.get("model") == a,
                                10, "a started in place", since=since)
        began = _at(prepared) - float(prepared["took_s"])
        assert began < _at(stopped), "a's engine start began before b's stop was over (beside it)"
        assert _at(stopped) <= _at(started), "llama-server in a is released only after b is stopped"
        assert container(docker_client, a).id == held.id
        assert d.model_state(a) == "RUNNING" and d.model_state(b) == "STOPPED"
        assert d.find(lambda r: r.get("event") == "prepared start not taken: stopped again") is None
    except AssertionError:
        print(d.dump())
        raise
    finally:
        d.terminate()


def test_a_swap_waiting_for_a_busy_model_prepares_its_target_while_that_model_finishes(
        tmp_path: Path, image_record: object, demo_model: Path, names: dict[str, str]) -> None:
    """fifo: b streams a long answer when a request for a comes, so b is held until it is done. a's container
    is started up to its gate while b still streams, not once b's stop comes."""
    for k in ("a", "b"):
        text = model_yaml(names[k], None, demo_model, demo_model.parent.name, memory="1g",
                          serving="lifecycle: on-demand\n")
        (tmp_path / f"{k}.yaml").write_text(text.replace("health:\n", "health:\n  start_timeout: 120\n", 1))
    d = Daemon(tmp_path, extra=["--memory-budget", "1500m", "--swap-policy", "fifo", "--no-standby"]).start()
    a, b = names["a"], names["b"]
    try:
        wait_for(lambda: d.model_state(a) == "STOPPED", 60, "the gateway listing the models")
        assert d.chat(a).status_code == 200
        assert d.chat(b).status_code == 200                # a stopped, its container held: ready to prepare
        with httpx.Client(timeout=120, trust_env=False) as c, \
                c.stream("POST", f"{d.gateway}/v1/completions", json={
                    "model": b, "prompt": "Count to fifty:", "max_tokens": 200, "ignore_eos": True,
                    "stream": True}) as long:
            lines = long.iter_lines()
            assert long.status_code == 200 and next(lines)    # b is streaming
            since = time.monotonic()
            with ThreadPoolExecutor(1) as pool:
                asked = pool.submit(d.chat, a)                # waits for b's answer, then b's stop
                t_prep, _ = d.wait_log(lambda r: r.get("event") == "prepared: started up to its gate ahead of its start",
                                       20, "a prepared while b streams", since=since)
                assert d.find(lambda r: r.get("event") == "transition" and r.get("model") == b
                              and r.get("to") == "STOPPING", since=since) is None, "prepared before b's stop"
                rest = [line for line in lines if line]
                assert rest[-1] == "data: [DONE]", rest[-3:]
                t_done = time.monotonic()
                assert t_prep < t_done, "prepared while b was still streaming"
                assert asked.result(120).status_code == 200
        assert d.model_state(a) == "RUNNING" and d.model_state(b) == "STOPPED"
        print(f"a prepared {t_done - t_prep:.2f} s before b's answer was over")
    except AssertionError:
        print(d.dump())
        raise
    finally:
        d.terminate()


def test_a_prepared_container_whose_start_never_comes_is_stopped_again_and_a_start_releases_one(
        docker_client: docker.DockerClient, image_record: Any, demo_model: Path, tmp_path: Path,
        names: dict[str, str]) -> None:
    (tmp_path / "m.yaml").write_text(model_yaml(names["a"], None, demo_model, demo_model.parent.name))
    spec = render_one(tmp_path)[names["a"]].spec
    rt = DockerRuntime(docker_client, gates=Gates(tmp_path / "gates"))
    rt.prepared_for_s = 1.0
    cid = rt.create(spec, held=True)
    try:
        rt.prepare(cid)
        wait_for(lambda: rt.calls["arm"] == 1 and docker_client.containers.get(cid).status == "running", 30,
                 "started up to its gate")
        assert rt.inspect(cid).status == "exited", "held at its gate: to the daemon a stopped container"
        wait_for(lambda: docker_client.containers.get(cid).status == "exited", 30, "stopped again unused")
        assert docker_client.containers.get(cid).attrs["State"]["ExitCode"] == 0, "the gate ended on SIGTERM"

        rt.prepare(cid)
        wait_for(lambda: rt.calls["arm"] == 2, 30, "prepared again")
        armed_at = docker_client.containers.get(cid).attrs["State"]["StartedAt"]
        rt.start(cid)
        assert rt.calls["release"] == 1, "the start was a release at the gate, no engine start"
        assert docker_client.containers.get(cid).attrs["State"]["StartedAt"] == armed_at
        port = rt.inspect(cid).host_port
        wait_for(lambda: _answers(port), 60, "llama-server up")
        time.sleep(1.5)
        assert docker_client.containers.get(cid).status == "running", "a started container is not stopped by the lease"

        rt.prepared_for_s = 600.0
        rt.stop(cid, timeout_s=10)
        rt.prepare(cid)
        wait_for(lambda: rt.calls["arm"] == 3 and docker_client.containers.get(cid).status == "running", 30,
                 "prepared a third time")
        rt.close()                    # the daemon exits: no lease would end this gate, so the close does
        assert docker_client.containers.get(cid).status == "exited"
    finally:
        docker_client.api.remove_container(cid, force=True)
        rt.close()


def _answers(port: int | None) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False
