"""What a new user meets (issue 20): commands in a second shell find the state of the daemon `make run`
started, and two daemons on one engine may each run a model of the same name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from supervisor import paths
from supervisor.control.client import ControlClient
from supervisor.artifacts.lock import read_lock
from supervisor.runtime import container_name

from .daemon_harness import Daemon, container, free_port, healthy, instance_for, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker

CTL = str(Path(sys.executable).with_name("llama-supervisorctl"))
MAKEFILE_VARS = (paths.STATE_ENV, paths.CACHE_ENV, paths.LOCK_ENV, paths.MANIFESTS_ENV)


def state(d: Daemon, model: str) -> str:
    with ControlClient(d.sockdir / "ctl.sock", timeout=5) as c:
        found = [m.state for m in c.status().models if m.name == model]
    return found[0] if found else ""


@pytest.fixture
def made_run(tmp_path: Path, docker_client: docker.DockerClient, image_record: object,
             demo_model: Path) -> Iterator[tuple[Daemon, str]]:
    """A daemon started as `make run` starts it: the Makefile's state and cache variables exported."""
    model = f"shell{uuid.uuid4().hex[:6]}"
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    port = free_port()
    (manifests / f"{model}.yaml").write_text(model_yaml(model, port, demo_model, demo_model.parent.name))
    d = Daemon(manifests, env={paths.STATE_ENV: str(paths.state_dir()), paths.CACHE_ENV: str(paths.cache_dir())})
    d.start()
    try:
        wait_for(lambda: healthy(port) and state(d, model) == "RUNNING", 120, f"{model} RUNNING")
        yield d, model
    finally:
        if d.proc and d.proc.poll() is None:
            d.terminate()
        remove_models(docker_client, [model])


def second_shell(d: Daemon, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """llama-supervisorctl as a second shell runs it: none of the Makefile's variables, another directory.
    (--socket: the test daemon's socket is not at the standard place, where `make run` keeps its.)"""
    env = {k: v for k, v in os.environ.items() if k not in MAKEFILE_VARS}
    env["HOME"] = env["XDG_STATE_HOME"] = env["XDG_CACHE_HOME"] = str(cwd)   # defaults that hold nothing
    return subprocess.run([CTL, "--socket", str(d.sockdir / "ctl.sock"), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def test_verify_hardware_and_fetch_model_in_a_second_shell_find_the_running_daemons_state(
    made_run: tuple[Daemon, str], image_record: object, demo_model: Path, tmp_path: Path
) -> None:
    d, model = made_run
    assert d.proc is not None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    theirs = f"(the running daemon's, pid {d.proc.pid})"

    variant = image_record.variant  # type: ignore[attr-defined]
    out = second_shell(d, "verify", variant, cwd=elsewhere)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(f"{variant}: OK "), out.stdout
    assert f"using state dir {paths.state_dir()}, cache dir {paths.cache_dir()} {theirs}" in out.stderr, out.stderr

    out = second_shell(d, "hardware", "--json", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert (body["state_dir"], body["lock"], body["state_from"]) == (
        str(paths.state_dir()), str(paths.lock_path()), theirs.strip("()"))
    assert body["native_binaries"] == {v: b.path for v, b in sorted(read_lock(paths.lock_path()).binaries.items())}

    out = second_shell(d, "fetch-model", cwd=elsewhere)       # the daemon's manifests, not ./manifests
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{model}: {demo_model} OK" in out.stdout, out.stdout


def test_two_instances_each_run_a_model_of_the_same_name(
    tmp_path: Path, docker_client: docker.DockerClient, image_record: object, demo_model: Path
) -> None:
    model = f"twin{uuid.uuid4().hex[:6]}"
    dirs = [tmp_path / "one", tmp_path / "two"]
    ports = [free_port(), free_port()]
    daemons: list[Daemon] = []
    try:
        for directory, port in zip(dirs, ports):
            directory.mkdir()
            (directory / f"{model}.yaml").write_text(model_yaml(model, port, demo_model, demo_model.parent.name))
            daemons.append(Daemon(directory).start())
        for d, port in zip(daemons, ports):
            wait_for(lambda: healthy(port) and state(d, model) == "RUNNING", 120, f"{model} RUNNING in {d.manifests}")
        for d in daemons:
            instance = instance_for(d.manifests)
            assert container(docker_client, model, instance).name == container_name(model, instance)
            assert not d.find(lambda r: r.get("model") == model and r.get("to") == "FATAL"), d.dump()
    finally:
        for d in daemons:
            if d.proc and d.proc.poll() is None:
                d.terminate()
        remove_models(docker_client, [model])
