"""One llama-supervisord with one healthy bystander model serves the daemon fault tests.

Each test adds its own uniquely named model next to the bystander, injects a
fault, and checks that the bystander's container (ID and StartedAt) is
untouched. The daemon may be replaced mid-package (kill -9 and start again), so
tests read it from the holder, never keep it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from integration.daemon_harness import Daemon, free_port, healthy, model_yaml, remove_models, wait_for

from .helpers import uid, write_manifest

LOAD_TIMEOUT = 120.0


@dataclass
class Shared:
    dir: Path
    daemon: Daemon
    steady: str
    steady_port: int
    demo: Path
    sha: str


@pytest.fixture(scope="package")
def shared(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
           image_record: object, demo_model: Path) -> Iterator[Shared]:
    directory = tmp_path_factory.mktemp("fault-manifests")
    steady, port = uid("fsteady"), free_port()
    write_manifest(directory, steady, model_yaml(steady, port, demo_model, demo_model.parent.name))
    s = Shared(directory, Daemon(directory).start(), steady, port, demo_model, demo_model.parent.name)
    try:
        wait_for(lambda: healthy(port), LOAD_TIMEOUT, "bystander healthy")
        yield s
    finally:
        if s.daemon.proc and s.daemon.proc.poll() is None:
            s.daemon.terminate()
        remove_models(docker_client, [steady])
