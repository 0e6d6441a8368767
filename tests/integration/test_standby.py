"""Standby (on by default) on the real engine, image and demo model (supervisor/runtime/docker/standby.py,
images/gate.c).

An on-demand model stopped by its idle TTL has its container started again ARM_DELAY_S later, held at
llama-gate before llama-server's exec: the engine says running, the daemon says STOPPED. The next request
releases it through its FIFO: no engine start (the container's StartedAt does not move), and it answers.
A new daemon finds an armed container stopped, and releases it the same way. The gate ends at once on the
engine's stop signal (exit 0, not the 137 of a SIGKILL after the timeout). At most --standby-max are held,
the last stopped kept; an always-on model's container is a plain one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from supervisor.runtime.docker.standby import ARM_DELAY_S, FIFO_TARGET, GATE

from .daemon_harness import Daemon, container, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture()
def name(docker_client: docker.DockerClient) -> Iterator[str]:
    found = f"sb{uuid.uuid4().hex[:6]}"
    yield found
    remove_models(docker_client, [found])


def _standby_daemon(manifests: Path, demo: Path, name: str, *, idle_ttl: int) -> Daemon:
    """A daemon (standby is its default) with one on-demand demo model (a long start budget: a loaded host is
    slow)."""
    text = model_yaml(name, None, demo, demo.parent.name, memory="1g",
                      serving=f"lifecycle: on-demand\nidle_ttl: {idle_ttl}\n")
    (manifests / "m.yaml").write_text(text.replace("health:\n", "health:\n  start_timeout: 120\n", 1))
    d = Daemon(manifests).start()
    try:
        wait_for(lambda: d.model_state(name) is not None, 60, "the gateway listing the model")
    except AssertionError:
        print(d.dump())
        d.terminate()
        raise
    return d


CTL = Path(sys.executable).with_name("llama-supervisorctl")


def _held(d: Daemon, model: str) -> tuple[bool, str]:
    """`status --json`'s held flag, and the status line's description."""
    sock = str(d.socket_path)
    row = json.loads(subprocess.run([str(CTL), "--socket", sock, "status", "--json", model], capture_output=True,
                                    text=True, timeout=60).stdout)[0]
    line = subprocess.run([str(CTL), "--socket", sock, "status", model], capture_output=True, text=True,
                          timeout=60).stdout
    return bool(row["held"]), line


def _armed_line(r: dict[str, object]) -> bool:
    return r.get("event") == "standby: armed"


def _armed(client: docker.DockerClient, d: Daemon, model: str) -> bool:
    c = container(client, model)
    return c.status == "running" and d.model_state(model) == "STOPPED"


def test_a_stopped_model_waits_at_its_gate_and_its_next_request_starts_it_without_the_engine(
        tmp_path: Path, image_record: object, demo_model: Path, name: str, docker_client: docker.DockerClient) -> None:
    d = _standby_daemon(tmp_path, demo_model, name, idle_ttl=1)
    second: Daemon | None = None
    try:
        assert d.chat(name).status_code == 200
        c = container(docker_client, name)
        assert c.attrs["Config"]["Entrypoint"][:2] == [GATE, FIFO_TARGET]
        assert c.attrs["HostConfig"]["ReadonlyRootfs"] and c.attrs["Config"]["User"] == "65532:65532"
        fifo = next(m for m in c.attrs["Mounts"] if m["Destination"] == FIFO_TARGET)
        assert fifo["RW"] is False, "the gate's FIFO is mounted read-only"

        # the idle TTL stops it; ARM_DELAY_S later the engine starts it again, up to the gate
        wait_for(lambda: d.model_state(name) == "STOPPED", 30, "stopped by its idle TTL")
        d.wait_log(_armed_line, ARM_DELAY_S + 30, "armed")
        assert _armed(docker_client, d, name), "running to the engine, STOPPED to the daemon"
        armed = container(docker_client, name)
        time.sleep(1.0)     # a resync pass or two: the daemon still calls it stopped
        assert d.model_state(name) == "STOPPED"
        held, line = _held(d, name)
        assert held and "container held ready (standby)" in line, line

        released = time.monotonic()
        assert d.chat(name).status_code == 200
        after = container(docker_client, name)
        assert after.id == armed.id
        assert after.attrs["State"]["StartedAt"] == armed.attrs["State"]["StartedAt"], \
            "released at its gate: the engine did not start it again"
        assert d.model_state(name) == "RUNNING"
        assert _held(d, name)[0] is False

        # a new daemon finds the armed container stopped, and releases it the same way
        d.wait_log(_armed_line, 30 + ARM_DELAY_S + 30, "armed again after the idle TTL", since=released)
        assert _armed(docker_client, d, name)
        armed = container(docker_client, name)
        assert d.terminate() == 0
        second = Daemon(tmp_path).start()
        wait_for(lambda: second.model_state(name) == "STOPPED", 60, "the new daemon sees it stopped")
        assert container(docker_client, name).status == "running", "still held at its gate"
        assert _held(second, name)[0], "found held, and said so"
        assert second.chat(name).status_code == 200
        after = container(docker_client, name)
        assert after.attrs["State"]["StartedAt"] == armed.attrs["State"]["StartedAt"]
    except AssertionError:
        print(d.dump())
        if second is not None:
            print(second.dump())
        raise
    finally:
        for daemon in (second, d):
            if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
                daemon.terminate()


def test_the_gate_ends_at_once_on_the_stop_signal(
        tmp_path: Path, image_record: object, demo_model: Path, name: str, docker_client: docker.DockerClient) -> None:
    d = _standby_daemon(tmp_path, demo_model, name, idle_ttl=600)
    try:
        assert d.chat(name).status_code == 200
        assert d.terminate() == 0     # the model keeps running; stop it as the engine would
        c = container(docker_client, name)
        c.stop(timeout=30)
        c.start()                     # up to its gate: nothing releases it now
        time.sleep(0.5)
        c.reload()
        assert c.status == "running"
        with pytest.raises(httpx.HTTPError):
            port = int(c.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).raise_for_status()
        t0 = time.monotonic()
        c.stop(timeout=30)
        took = time.monotonic() - t0
        c.reload()
        assert c.attrs["State"]["ExitCode"] == 0, "the gate handled SIGTERM (137 would be the timeout's SIGKILL)"
        assert took < 30
    except AssertionError:
        print(d.dump())
        raise


@pytest.fixture()
def names(docker_client: docker.DockerClient) -> Iterator[tuple[str, str, str]]:
    tag = uuid.uuid4().hex[:5]
    found = (f"sa{tag}", f"sb{tag}", f"sc{tag}")
    yield found
    remove_models(docker_client, list(found))


def _disarmed_line(r: dict[str, object]) -> bool:
    return r.get("event") == "standby: disarmed, over --standby-max"


def test_at_most_standby_max_are_held_the_last_stopped_kept_and_always_on_models_stay_plain(
        tmp_path: Path, image_record: object, demo_model: Path, names: tuple[str, str, str],
        docker_client: docker.DockerClient) -> None:
    a, b, always = names
    for n in (a, b):
        text = model_yaml(n, None, demo_model, demo_model.parent.name, memory="1g",
                          serving="lifecycle: on-demand\nidle_ttl: 1\n", start_timeout=120)
        (tmp_path / f"{n}.yaml").write_text(text)
    (tmp_path / f"{always}.yaml").write_text(
        model_yaml(always, None, demo_model, demo_model.parent.name, memory="1g", start_timeout=120))
    d = Daemon(tmp_path, extra=["--standby-max", "1"]).start()
    try:
        wait_for(lambda: d.model_state(always) == "RUNNING", 150, "the always-on model running")
        plain = container(docker_client, always)
        assert plain.attrs["Config"]["Entrypoint"] in (None, []) or plain.attrs["Config"]["Entrypoint"][0] != GATE
        assert not any(m["Destination"] == FIFO_TARGET for m in plain.attrs["Mounts"])
        assert plain.attrs["Config"].get("Healthcheck", {}).get("Test", ["NONE"]) != ["NONE"], \
            "an always-on container keeps the image's HEALTHCHECK"

        # a stops and is armed; b stops and is armed: a goes back to a plain stopped container
        assert d.chat(a).status_code == 200
        wait_for(lambda: d.model_state(a) == "STOPPED", 30, "a stopped by its idle TTL")
        d.wait_log(lambda r: _armed_line(r) and r.get("container") == container(docker_client, a).name,
                   ARM_DELAY_S + 30, "a armed")
        t_b = time.monotonic()
        assert d.chat(b).status_code == 200
        wait_for(lambda: d.model_state(b) == "STOPPED", 30, "b stopped by its idle TTL")
        _, line = d.wait_log(_disarmed_line, ARM_DELAY_S + 30, "a disarmed", since=t_b)
        assert line["container"] == container(docker_client, a).name and line["standby_max"] == 1
        wait_for(lambda: container(docker_client, a).status == "exited", 30, "a's container stopped")
        assert _armed(docker_client, d, b), "b, the last stopped, is held"
        assert d.model_state(a) == "STOPPED"

        # a again: an engine start (it was not held), then its stop arms it and b goes
        assert d.chat(a).status_code == 200
        t_a = time.monotonic()
        wait_for(lambda: d.model_state(a) == "STOPPED", 30, "a stopped again")
        _, line = d.wait_log(_disarmed_line, ARM_DELAY_S + 30, "b disarmed", since=t_a)
        assert line["container"] == container(docker_client, b).name
        wait_for(lambda: container(docker_client, b).status == "exited", 30, "b's container stopped")
        assert _armed(docker_client, d, a)
        assert d.chat(b).status_code == 200, "a disarmed model still starts (an engine start)"
    except AssertionError:
        print(d.dump())
        raise
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.terminate()
