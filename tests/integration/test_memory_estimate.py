"""The memory estimate against what the demo model really holds (issue 22: render.memory.estimate_memory says
it stays above the measured resident figure; load_desired must feed it the GGUF header's KV sizes).

The estimate comes from the real path (load_desired over a manifest naming the demo model, with the
real image lock); the figure is llama-server's peak resident set (VmHWM: its anonymous memory plus the
mapped model file), read from /proc on the host after a completion, so the compute buffers are in use
too. Not the cgroup's usage: page cache the host already held for the model file is charged elsewhere.
Measured on the 2-core test host: 332-350 MiB at ctx 2048 (estimate 430), 424-451 MiB at ctx 32768 (estimate
970; without the KV cache the estimate would be 394, under the measured figure: this test sees that).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import docker
import httpx
import pytest

from supervisor.artifacts import hardware
from supervisor import paths
from supervisor.artifacts.lock import ImageRecord, read_lock
from supervisor.render.desired import load_desired

from .daemon_harness import free_port, wait_container_healthy

pytestmark = pytest.mark.docker
MiB = 1 << 20


def _peak_resident_bytes(container: docker.models.containers.Container) -> int:
    """VmHWM of the container's llama-server, by its host PID (the test runs where the engine does)."""
    container.reload()
    status = Path(f"/proc/{container.attrs['State']['Pid']}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert found, status
    return int(found.group(1)) * 1024


@pytest.mark.parametrize("ctx", [2048, 32768])
def test_the_estimate_stays_above_the_demo_models_measured_memory(
    docker_client: docker.DockerClient, image_record: ImageRecord, demo_model: Path, tmp_path: Path, ctx: int
) -> None:
    (tmp_path / "m.yaml").write_text(
        "kind: model\nname: estimate\nprofile: auto\n"
        f"source: {{path: {demo_model}, sha256: {demo_model.parent.name}}}\n"
        f"server: {{port: null, ctx_size: {ctx}, threads: 2}}\n")
    desired, problems = load_desired(tmp_path, read_lock(paths.lock_path()), hardware.detect())
    assert problems == []
    serving, spec = desired["estimate"].serving, desired["estimate"].spec
    assert "KV unknown" not in serving.memory_basis and " + KV " in serving.memory_basis, serving.memory_basis
    port = free_port()
    container = docker_client.containers.run(
        image_record.image_id, list(spec.argv), detach=True, name=f"lsv-estimate-{uuid.uuid4().hex[:8]}",
        ports={f"{spec.container_port}/tcp": ("127.0.0.1", port)}, read_only=True, tmpfs={"/tmp": "size=64m"},
        cap_drop=["ALL"], security_opt=["no-new-privileges:true"], user=spec.user,
        volumes={m.source: {"bind": m.target, "mode": "ro"} for m in spec.mounts},
        labels={"io.llama-supervisor.test": "estimate"},
    )
    try:
        wait_container_healthy(container, port)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "Count from one to twenty."}], "max_tokens": 48})
        r.raise_for_status()
        measured = _peak_resident_bytes(container)
    finally:
        container.remove(force=True)
    print(f"\nctx {ctx}: estimate {serving.memory_bytes / MiB:.0f} MiB ({serving.memory_basis}),"
          f" measured {measured / MiB:.0f} MiB")
    assert measured > 100 * MiB, "the reading is the model's, not an empty cgroup's"
    assert serving.memory_bytes >= measured
