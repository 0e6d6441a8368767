"""llama-supervisord against the real engine, the real image and the demo model, through real manifests.

One daemon with two models serves the tests of this module in order (a model load
costs seconds on a 2-core host); each test leaves both models healthy. Each
test daemon has its own instance label (daemon_harness.instance_for), so daemons
of other modules never take these containers for orphans. Every container a
test creates carries a unique model name and is removed afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .daemon_harness import Daemon, container, free_port, healthy, identity, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker

LOAD_TIMEOUT = 120.0


class Pair:
    def __init__(self, directory: Path, demo_model: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.dir = directory
        self.demo = demo_model
        self.a, self.b = f"it{tag}-a", f"it{tag}-b"
        self.port = {self.a: free_port(), self.b: free_port()}
        for m in (self.a, self.b):
            self.write(m)

    def write(self, model: str, *, ctx: int = 512) -> None:
        tmp = self.dir / f".{model}.tmp"
        tmp.write_text(model_yaml(model, self.port[model], self.demo, self.demo.parent.name, ctx=ctx))
        tmp.rename(self.dir / f"{model}.yaml")      # as editors save: write aside, rename over


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
         image_record: object, demo_model: Path) -> Iterator[tuple[Pair, Daemon]]:
    p = Pair(tmp_path_factory.mktemp("manifests"), demo_model)
    d = Daemon(p.dir).start()
    try:
        yield p, d
    finally:
        if d.proc and d.proc.poll() is None:
            d.terminate()
        remove_models(docker_client, [p.a, p.b])


def both_healthy(p: Pair) -> bool:
    return healthy(p.port[p.a]) and healthy(p.port[p.b])


def test_two_models_become_healthy(pair: tuple[Pair, Daemon], docker_client: docker.DockerClient) -> None:
    p, d = pair
    try:
        wait_for(lambda: both_healthy(p), LOAD_TIMEOUT, "both models healthy")
        for m in (p.a, p.b):
            d.wait_log(lambda r, m=m: r.get("event") == "transition" and r.get("model") == m
                       and r.get("to") == "RUNNING", 10, f"{m} RUNNING")
    except AssertionError:
        print(d.dump())
        raise
    attrs = container(docker_client, p.a).attrs
    hc = attrs["HostConfig"]
    assert hc["ReadonlyRootfs"] and hc["CapDrop"] == ["ALL"] and hc["RestartPolicy"]["Name"] == "no"
    assert hc["PortBindings"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"
    assert attrs["Config"]["User"] == "65532:65532"


def test_sigkill_is_replaced_others_untouched(pair: tuple[Pair, Daemon], docker_client: docker.DockerClient) -> None:
    p, d = pair
    wait_for(lambda: both_healthy(p), LOAD_TIMEOUT, "both models healthy")
    other = identity(docker_client, p.b)
    victim_id, victim_started = identity(docker_client, p.a)
    t_kill = time.monotonic()
    docker_client.api.kill(victim_id, signal="SIGKILL")
    try:
        t_detect, _ = d.wait_log(lambda r: r.get("event") == "container exited" and r.get("model") == p.a,
                                 10, "exit detected", since=t_kill)
        t_running, _ = d.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == p.a
                                  and r.get("to") == "RUNNING", LOAD_TIMEOUT, "victim RUNNING again", since=t_kill)
    except AssertionError:
        print(d.dump())
        raise
    wait_for(lambda: healthy(p.port[p.a]), 10, "victim healthy")
    t_healthy = time.monotonic()
    print(f"\nSIGKILL -> detected {1000 * (t_detect - t_kill):.0f} ms, -> RUNNING {t_running - t_kill:.2f} s, "
          f"-> /health 200 seen by the test {t_healthy - t_kill:.2f} s")
    assert identity(docker_client, p.b) == other                     # same ID, same StartedAt
    assert container(docker_client, p.a).status == "running"
    assert identity(docker_client, p.a)[1] != victim_started           # the victim was started again


def test_paused_model_is_replaced(pair: tuple[Pair, Daemon], docker_client: docker.DockerClient) -> None:
    p, d = pair
    wait_for(lambda: both_healthy(p), LOAD_TIMEOUT, "both models healthy")
    other = identity(docker_client, p.b)
    cid, started = identity(docker_client, p.a)
    t0 = time.monotonic()
    docker_client.api.pause(cid)
    try:
        wait_for(lambda: identity(docker_client, p.a)[1] != started
                 and docker_client.containers.get(cid).status == "running", 30, "paused container restarted")
        wait_for(lambda: healthy(p.port[p.a]), LOAD_TIMEOUT, "restarted model healthy")
    except AssertionError:
        print(d.dump())
        raise
    print(f"\npause -> healthy again {time.monotonic() - t0:.2f} s")
    assert identity(docker_client, p.b) == other


def test_manifest_edit_recreates_only_that_model(pair: tuple[Pair, Daemon], docker_client: docker.DockerClient) -> None:
    p, d = pair
    wait_for(lambda: both_healthy(p), LOAD_TIMEOUT, "both models healthy")
    old_a, _ = identity(docker_client, p.a)
    other = identity(docker_client, p.b)
    p.write(p.a, ctx=640)

    def recreated() -> bool:
        try:
            return identity(docker_client, p.a)[0] != old_a
        except docker.errors.NotFound:      # between the old container's removal and the new one's create
            return False

    try:
        wait_for(recreated, 30, "model a recreated")
        wait_for(lambda: healthy(p.port[p.a]), LOAD_TIMEOUT, "recreated model healthy")
    except AssertionError:
        print(d.dump())
        raise
    assert identity(docker_client, p.b) == other
    assert "640" in container(docker_client, p.a).attrs["Args"]


def test_invalid_yaml_changes_nothing_and_logs_file_line(
    pair: tuple[Pair, Daemon], docker_client: docker.DockerClient
) -> None:
    p, d = pair
    wait_for(lambda: both_healthy(p), LOAD_TIMEOUT, "both models healthy")
    before = {m: identity(docker_client, m) for m in (p.a, p.b)}
    t0 = time.monotonic()
    broken = p.dir / f"{p.a}.yaml"
    good = broken.read_text()
    broken.write_text(good.replace("  ctx_size:", "   ctx_size:"))
    try:
        _, rec = d.wait_log(lambda r: r.get("event", "").startswith("invalid manifest"), 10, "error logged",
                            since=t0)
    except AssertionError:
        print(d.dump())
        raise
    assert f"{p.a}.yaml:" in rec["problem"], rec
    time.sleep(2)
    assert {m: identity(docker_client, m) for m in (p.a, p.b)} == before
    assert both_healthy(p)
    broken.write_text(good)
