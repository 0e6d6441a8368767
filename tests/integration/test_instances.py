"""Two daemons on one engine (a test run beside `make run`) leave each other's containers alone."""

from __future__ import annotations

import uuid
from pathlib import Path

import docker
import pytest

from .daemon_harness import Daemon, free_port, healthy, identity, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker


def test_second_daemon_does_not_remove_the_first_ones_models(
    tmp_path: Path, docker_client: docker.DockerClient, image_record: object, demo_model: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    a, b = f"inst{tag}-a", f"inst{tag}-b"
    dirs = {a: tmp_path / "one", b: tmp_path / "two"}
    ports = {a: free_port(), b: free_port()}
    for m, d in dirs.items():
        d.mkdir()
        (d / f"{m}.yaml").write_text(model_yaml(m, ports[m], demo_model, demo_model.parent.name))
    first = Daemon(dirs[a]).start()
    second = None
    try:
        wait_for(lambda: healthy(ports[a]), 120, f"{a} healthy")
        before = identity(docker_client, a)
        second = Daemon(dirs[b]).start()
        wait_for(lambda: healthy(ports[b]), 120, f"{b} healthy")
        # Two resync passes of the second daemon: its containers came up through events, so only a
        # resync could list (and wrongly adopt or remove) the first one's. No event marks a resync.
        second.await_resyncs(2)
        assert identity(docker_client, a) == before, "the second daemon touched the first one's container"
        assert healthy(ports[a])
        assert not second.find(lambda r: r.get("model") == a), second.dump()
    finally:
        for d in (first, second):
            if d and d.proc and d.proc.poll() is None:
                d.terminate()
        remove_models(docker_client, [a, b])
