"""Swarm as a runtime target, end to end on the local engine in single-node swarm mode.

The module turns swarm mode on only if the engine is not in it, and leaves it
(`docker swarm leave --force`, then removes the docker_gwbridge network swarm
init made) only in that case, so the engine ends as it was found. Its stack has a unique name and two models with unique names; the
stack is removed at the end whatever happened. The tests run in order on one
deployment (a model load costs seconds on a 2-core host).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import docker
import pytest
from click.testing import CliRunner

from supervisor import export
from supervisor.artifacts import hardware
from supervisor.cli import cmd_export
from supervisor.export import swarm_deploy
from supervisor.artifacts.lock import ImageLock, ImageRecord
from supervisor.manifest import load_dir
from supervisor.render.facts import stat_sizes

from .daemon_harness import free_port, healthy, model_yaml, wait_for

pytestmark = pytest.mark.docker

CONVERGE_S = 180.0
GWBRIDGE = "docker_gwbridge"


class Stack:
    def __init__(self, directory: Path, demo: Path, lock: ImageLock) -> None:
        tag = uuid.uuid4().hex[:6]
        self.dir, self.demo, self.lock = directory, demo, lock
        self.name = f"lt{tag}"
        self.a, self.b = f"sw{tag}-a", f"sw{tag}-b"
        self.port = {self.a: free_port(), self.b: free_port()}
        self.file = directory.parent / f"{self.name}.yaml"
        for m in (self.a, self.b):
            self.write(m)

    def write(self, model: str, *, ctx: int = 512) -> None:
        (self.dir / f"{model}.yaml").write_text(
            model_yaml(model, self.port[model], self.demo, self.demo.parent.name, ctx=ctx))

    def render(self) -> str:
        manifests = load_dir(self.dir)
        host = hardware.detect()
        models, problems = export.collect(manifests, self.lock, host, file_sizes=stat_sizes(manifests))
        assert problems == []
        text = export.render_target("swarm", models, export.Options(node_memory_bytes=host.memory_bytes))
        self.file.write_text(text)
        return text

    def service(self, model: str) -> str:
        return f"{self.name}_{model}"


@pytest.fixture(scope="module")
def swarm_engine(docker_client: docker.DockerClient) -> Iterator[docker.DockerClient]:
    state = swarm_deploy.swarm_state(docker_client)
    turned_on = False
    had_gwbridge = bool(docker_client.networks.list(names=[GWBRIDGE]))
    if state == "inactive":
        docker_client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
        turned_on = True
    elif state != "active":
        pytest.fail(f"the engine's swarm state is {state!r}: fix it (docker swarm leave --force) and run again")
    try:
        yield docker_client
    finally:
        if turned_on:
            docker_client.swarm.leave(force=True)
            assert swarm_deploy.swarm_state(docker_client) == "inactive"
            # swarm init made docker_gwbridge and leave keeps it: remove it too, as the engine was
            if not had_gwbridge:
                for net in docker_client.networks.list(names=[GWBRIDGE]):
                    if net.name == GWBRIDGE:
                        net.remove()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, swarm_engine: docker.DockerClient,
          image_record: ImageRecord, demo_model: Path) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("swarm") / "manifests"
    directory.mkdir()
    s = Stack(directory, demo_model, ImageLock().with_record(image_record))
    try:
        yield s
    finally:
        try:
            swarm_deploy.remove(s.name)
        finally:
            # sparse: no inspect per container, which races the task being removed (404 between list and inspect)
            wait_for(lambda: not swarm_engine.containers.list(
                all=True, sparse=True, filters={"label": f"{swarm_deploy.STACK_LABEL}={s.name}"}), 60,
                "task containers gone", step=0.5)


def converged(client: docker.DockerClient, s: Stack) -> list[swarm_deploy.ServiceState] | None:
    states = swarm_deploy.status(client, s.name)
    return states if len(states) == 2 and all(x.converged for x in states) else None


def test_stack_file_passes_the_docker_clis_own_loader(stack: Stack) -> None:
    stack.render()
    done = subprocess.run(["docker", "stack", "config", "-c", str(stack.file)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert f"published: {stack.port[stack.a]}" in done.stdout


def test_deploy_serves_health_through_the_published_port(stack: Stack, swarm_engine: docker.DockerClient) -> None:
    stack.render()
    output = swarm_deploy.deploy(stack.file, stack.name)
    assert "Ignoring unsupported options" not in output, output   # every key the render writes is enforced
    states = wait_for(lambda: converged(swarm_engine, stack), CONVERGE_S, "both services running", step=1)
    for m in (stack.a, stack.b):
        assert healthy(stack.port[m]), m
    assert {s.model for s in states} == {stack.a, stack.b}
    (cid,) = swarm_deploy.task_containers(swarm_engine, stack.service(stack.a))
    attrs = swarm_engine.api.inspect_container(cid)
    hc = attrs["HostConfig"]
    assert hc["ReadonlyRootfs"] and hc["CapDrop"] == ["ALL"] and hc["PidsLimit"] == 128
    assert hc["Memory"] == 1 << 30 and attrs["Config"]["User"] == "65532:65532"
    assert attrs["State"]["Health"]["Status"] == "healthy"


def test_a_killed_task_is_replaced_by_swarm(stack: Stack, swarm_engine: docker.DockerClient) -> None:
    wait_for(lambda: converged(swarm_engine, stack), CONVERGE_S, "both services running", step=1)
    (victim,) = swarm_deploy.task_containers(swarm_engine, stack.service(stack.a))
    (other,) = swarm_deploy.task_containers(swarm_engine, stack.service(stack.b))
    swarm_engine.api.kill(victim)
    replacement = wait_for(
        lambda: [c for c in swarm_deploy.task_containers(swarm_engine, stack.service(stack.a)) if c != victim],
        CONVERGE_S, "a new running task", step=1)
    assert replacement and replacement[0] != victim
    wait_for(lambda: healthy(stack.port[stack.a]), 60, "the replacement serves /health")
    assert swarm_deploy.task_containers(swarm_engine, stack.service(stack.b)) == [other]


def test_a_changed_manifest_updates_only_that_service(stack: Stack, swarm_engine: docker.DockerClient) -> None:
    before = {s.model: s for s in wait_for(lambda: converged(swarm_engine, stack), CONVERGE_S, "running", step=1)}
    (a_task,) = swarm_deploy.task_containers(swarm_engine, stack.service(stack.a))
    (b_task,) = swarm_deploy.task_containers(swarm_engine, stack.service(stack.b))
    stack.write(stack.b, ctx=1024)
    cli = click.Group()
    cmd_export.register(cli)          # the operator's path: render + docker stack deploy + wait
    result = CliRunner().invoke(cli, ["deploy", "swarm", "--manifests", str(stack.dir), "--stack", stack.name,
                                      "--wait", str(CONVERGE_S)])
    assert result.exit_code == 0, result.output
    assert "deployed" in result.output

    def b_replaced() -> bool:
        tasks = swarm_deploy.task_containers(swarm_engine, stack.service(stack.b))
        return bool(tasks) and b_task not in tasks and bool(converged(swarm_engine, stack))

    wait_for(b_replaced, CONVERGE_S, "b's new task running", step=1)
    after = {s.model: s for s in swarm_deploy.status(swarm_engine, stack.name)}
    assert after[stack.b].config_hash != before[stack.b].config_hash
    assert after[stack.a].config_hash == before[stack.a].config_hash
    assert swarm_deploy.task_containers(swarm_engine, stack.service(stack.a)) == [a_task]
    (new_b,) = swarm_deploy.task_containers(swarm_engine, stack.service(stack.b))
    assert "1024" in swarm_engine.api.inspect_container(new_b)["Args"]
    wait_for(lambda: healthy(stack.port[stack.b]), 60, "b serves /health after the update")


def test_deploy_status_command_reads_service_and_task_state(stack: Stack, swarm_engine: docker.DockerClient) -> None:
    wait_for(lambda: converged(swarm_engine, stack), CONVERGE_S, "running", step=1)
    cli = click.Group()
    cmd_export.register(cli)
    result = CliRunner().invoke(cli, ["deploy", "status", "--stack", stack.name])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1] for line in result.output.splitlines()}
    assert lines == {stack.a: "RUNNING", stack.b: "RUNNING"}
    missing = CliRunner().invoke(cli, ["deploy", "status", "--stack", f"{stack.name}-absent"])
    assert missing.exit_code == 3 and "no services" in missing.output
