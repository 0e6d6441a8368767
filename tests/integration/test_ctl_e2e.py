"""llama-supervisorctl against a real daemon, the real engine and the demo model.

Each command runs as an operator would run it: a new process, over the control
socket; output and exit codes are asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .daemon_harness import Daemon, free_port, healthy, identity, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker

CTL = str(Path(sys.executable).with_name("llama-supervisorctl"))


class Ops:
    def __init__(self, directory: Path, daemon: Daemon, model: str, port: int) -> None:
        self.dir, self.daemon, self.model, self.port = directory, daemon, model, port

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        sock = str(self.daemon.sockdir / "ctl.sock")
        return subprocess.run([CTL, "--socket", sock, *args], capture_output=True, text=True, timeout=timeout)

    def state(self) -> str:
        out = self.ctl("status", "--json", self.model)
        return str(json.loads(out.stdout)[0]["state"])


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
        image_record: object, demo_model: Path) -> Iterator[Ops]:
    directory = tmp_path_factory.mktemp("ctl-manifests")
    model, port = f"ctl{uuid.uuid4().hex[:6]}", free_port()
    (directory / f"{model}.yaml").write_text(model_yaml(model, port, demo_model, demo_model.parent.name))
    daemon = Daemon(directory).start()
    o = Ops(directory, daemon, model, port)
    try:
        wait_for(lambda: healthy(port), 120, f"{model} healthy")
        wait_for(lambda: o.state() == "RUNNING", 30, f"{model} RUNNING")
        yield o
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.terminate()
        remove_models(docker_client, [model, f"{model}-new"])


def test_status_shows_the_running_model_in_supervisorctl_layout(ops: Ops) -> None:
    out = ops.ctl("status")
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith(ops.model))
    assert line[:33].rstrip() == ops.model and line[33:43].rstrip() == "RUNNING"
    assert f"port {ops.port}, container " in line and ", uptime " in line and ", restarts 0" in line
    unknown = ops.ctl("status", "no-such-model")
    assert unknown.returncode == 4


def test_stop_then_start_then_restart(ops: Ops, docker_client: docker.DockerClient) -> None:
    out = ops.ctl("stop", ops.model)
    assert (out.returncode, out.stdout.strip()) == (0, f"{ops.model}: stopped"), out.stderr
    assert ops.state() == "STOPPED" and not healthy(ops.port)
    assert ops.ctl("status", ops.model).returncode == 3          # a named model is not running
    out = ops.ctl("start", ops.model)
    assert (out.returncode, out.stdout.strip()) == (0, f"{ops.model}: started"), out.stderr
    assert healthy(ops.port)
    before = identity(docker_client, ops.model)
    out = ops.ctl("restart", ops.model)
    assert (out.returncode, out.stdout.strip()) == (0, f"{ops.model}: started"), out.stderr
    after = identity(docker_client, ops.model)
    assert after[0] == before[0] and after[1] != before[1]       # same container, started again in place
    assert healthy(ops.port)


def test_tail_prints_the_container_log(ops: Ops) -> None:
    out = ops.ctl("tail", "-n", "200", ops.model)
    assert out.returncode == 0, out.stderr
    assert "server is listening" in out.stdout or "HTTP server listening" in out.stdout or "listening" in out.stdout


def test_reread_reports_and_update_applies_only_the_change(ops: Ops, demo_model: Path,
                                                          docker_client: docker.DockerClient) -> None:
    old = identity(docker_client, ops.model)
    new_model, new_port = f"{ops.model}-new", free_port()
    (ops.dir / f"{new_model}.yaml.tmp").write_text(model_yaml(new_model, new_port, demo_model, demo_model.parent.name))
    # Written aside and renamed in, as editors do; the watcher applies it too, and
    # reread must then report nothing left to do for it, or report it available.
    (ops.dir / f"{new_model}.yaml.tmp").rename(ops.dir / f"{new_model}.yaml")
    out = ops.ctl("reread")
    assert out.returncode == 0, out.stderr
    # The watcher may have applied it already (debounce ~0.2 s); then there is nothing to reread.
    assert out.stdout.strip() in (f"{new_model}: available", "No config updates to models"), out.stdout
    out = ops.ctl("update")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: healthy(new_port), 120, f"{new_model} healthy")
    assert identity(docker_client, ops.model) == old              # the unchanged model was not touched
    (ops.dir / f"{new_model}.yaml").unlink()
    ops.ctl("update")
    wait_for(lambda: not docker_client.containers.list(all=True, filters={"label": f"io.llama-supervisor.model={new_model}"}),
             60, f"{new_model} removed")
    assert identity(docker_client, ops.model) == old
