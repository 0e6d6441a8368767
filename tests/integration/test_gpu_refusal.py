"""A GPU profile on a real Docker engine without the NVIDIA container runtime (issue 19, section 2): refused
with the fix at validate, by the daemon, and before the create, never the engine's error.

Needs no cuda image, so it is part of `make test`: the refusals come before any image is looked at. Where
the model would need the cuda image, the host's CPU image stands in for it, relabelled (`stand_in`): the
checks under test never reach it. On an engine that has the NVIDIA runtime there is nothing to refuse and
the module is skipped; on a host without a GPU (this one) render refuses a cuda profile first ("no NVIDIA GPU
was detected"), so the runtime check is driven through a host description that has one (`gpu_host`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors
import pytest

from supervisor.artifacts import gpu_runtime, hardware
from supervisor.artifacts.lock import ImageLock, ImageRecord, write_lock
from supervisor.core.spec import DesiredModel
from supervisor.errors import GpuUnavailable
from supervisor.manifest import load_dir
from supervisor.render.desired import render_all
from supervisor.render.facts import stat_sizes
from supervisor.runtime.docker.runtime import DockerRuntime
from supervisor.runtime.docker.verifier import LockVerifier

from .daemon_harness import RESYNC_INTERVAL_S, Daemon, free_port, remove_models

pytestmark = pytest.mark.docker

CTL = Path(sys.executable).with_name("llama-supervisorctl")
FIX = "nvidia-ctk runtime configure --runtime=docker"


@pytest.fixture(scope="module")
def no_nvidia_runtime(docker_client: docker.DockerClient) -> str:
    why = gpu_runtime.missing(docker_client.info(), hook_on_path=shutil.which(gpu_runtime.HOOK) is not None)
    if not why:
        pytest.skip("this Docker engine has the NVIDIA container runtime: nothing to refuse")
    return why


def gpu_manifests(directory: Path, name: str, model: Path) -> Path:
    (directory / f"{name}.yaml").write_text(f"""\
kind: model
name: {name}
source: {{path: {model}, sha256: {model.parent.name}}}
profile: gpu
server: {{port: {free_port()}, ctx_size: 512, threads: 1}}
resources: {{memory: 1g, pids: 128}}
---
kind: profile
name: gpu
variant: cuda
gpu: {{vendor: nvidia, layers: 99}}
""")
    return directory


def rendered_for_a_gpu_host(directory: Path, name: str, stand_in: ImageRecord) -> DesiredModel:
    """The model as render gives it on a host with one GPU: the cuda variant, a device request for nvidia."""
    gpu_host = replace(hardware.detect(), gpus=(hardware.GpuInfo(0, "a GPU this host does not have", 80 << 30),))
    manifests = load_dir(directory)
    desired, problems = render_all(manifests, ImageLock().with_record(stand_in), gpu_host,
                                   file_sizes=stat_sizes(manifests))
    assert problems == [] and desired[name].spec.gpu is not None
    return desired[name]


def test_the_engine_fails_a_device_request_and_the_verifier_refuses_it_first(
    tmp_path: Path, docker_client: docker.DockerClient, image_record: ImageRecord, demo_model: Path,
    no_nvidia_runtime: str,
) -> None:
    name = f"gpu{uuid.uuid4().hex[:6]}"
    stand_in = replace(image_record, variant="cuda")
    desired = rendered_for_a_gpu_host(gpu_manifests(tmp_path, name, demo_model), name, stand_in)
    lock_path = tmp_path / "images.lock.json"
    write_lock(lock_path, ImageLock().with_record(stand_in))
    runtime = DockerRuntime(docker_client)
    try:
        # What the check spares the operator: the engine creates the container and fails its start.
        cid = runtime.create(desired.spec)
        with pytest.raises(Exception, match="could not select device driver") as engine_error:
            runtime.start(cid)
        print(f"\nthe engine, unguarded: {type(engine_error.value).__name__}: {engine_error.value}")
        remove_models(docker_client, [name])
        # The daemon's verifier runs before every create and refuses it, permanent, with the fix.
        with pytest.raises(GpuUnavailable) as refused:
            LockVerifier(docker_client, lock_path).check_image(desired)
        message = str(refused.value)
        assert message.startswith(f"{name}: its profile asks for NVIDIA GPUs, but this Docker engine has no NVIDIA")
        assert FIX in message and no_nvidia_runtime in message
        assert not refused.value.retryable and refused.value.exit_code == 3
        assert docker_client.containers.list(all=True, filters={"label": f"io.llama-supervisor.model={name}"}) == []
    finally:
        remove_models(docker_client, [name])


def test_validate_refuses_the_gpu_profile_at_its_line_with_the_fix(tmp_path: Path, demo_model: Path,
                                                                   no_nvidia_runtime: str) -> None:
    name = f"gpu{uuid.uuid4().hex[:6]}"
    directory = gpu_manifests(tmp_path, name, demo_model)
    ran = subprocess.run([str(CTL), "validate", str(directory)], capture_output=True, text=True, timeout=120)
    out = ran.stdout + ran.stderr
    assert ran.returncode == 2, out
    assert "Traceback" not in out
    line = next(x for x in out.splitlines() if f"model '{name}'" in x and "warning" not in x)
    assert line.startswith(f"{directory / name}.yaml:4: ")          # the profile line
    # Without a GPU, render refuses the cuda variant; with one, the engine check refuses the runtime.
    assert ("no NVIDIA GPU was detected" in line and "fix: " in line) or FIX in line, line


def test_the_daemon_starts_no_container_for_the_gpu_model_and_logs_why(
    tmp_path: Path, docker_client: docker.DockerClient, demo_model: Path, no_nvidia_runtime: str,
) -> None:
    name = f"gpu{uuid.uuid4().hex[:6]}"
    d = Daemon(gpu_manifests(tmp_path, name, demo_model)).start()
    try:
        _, rec = d.wait_log(lambda r: name in str(r.get("problem", "")) or name in str(r.get("error", "")), 60,
                            "the GPU model's refusal in the daemon's log")
        why = str(rec.get("problem") or rec.get("error"))
        assert ("no NVIDIA GPU was detected" in why and "fix: " in why) or FIX in why, why
        time.sleep(RESYNC_INTERVAL_S + 1)              # a resync pass has run: still nothing created
        assert docker_client.containers.list(all=True, filters={"label": f"io.llama-supervisor.model={name}"}) == []
        assert d.proc is not None and d.proc.poll() is None, d.dump()
        assert "Traceback" not in d.dump(last=None)
    finally:
        if d.proc and d.proc.poll() is None:
            d.terminate()
        remove_models(docker_client, [name])
