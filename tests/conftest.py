"""Shared fixtures: the real Docker engine, the built image's lock record, the demo model.

`make test` builds the image and fetches the model first; these fixtures only
find them. Docker tests skip, with the reason, only where no engine answers; on
CI (CI=true) an unreachable engine is an error, not a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

DEMO_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
DEMO_FILE = "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as e:  # the engine is absent: the only reason to skip
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a reachable Docker engine: {e}")
        pytest.skip(f"no Docker engine reachable: {e}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def image_record(docker_client: object):  # -> supervisor.artifacts.lock.ImageRecord
    from supervisor.artifacts import hardware
    from supervisor import paths
    from supervisor.artifacts.lock import read_lock

    lock = read_lock(paths.lock_path())
    variant = os.environ.get("LLAMA_SUPERVISOR_TEST_VARIANT") or hardware.best_variant(hardware.detect())
    record = lock.get(variant)
    if record is None:
        pytest.fail(
            f"no image for {variant} in {paths.lock_path()}: run 'make image' "
            f"(llama-supervisorctl build {variant}) first"
        )
    return record


@pytest.fixture(scope="session")
def demo_model() -> Path:
    from supervisor.artifacts.modelsrc import cache_path

    path = cache_path(DEMO_SHA256, DEMO_FILE)
    if not path.exists():
        pytest.fail(f"demo model missing at {path}: run 'make model' (llama-supervisorctl fetch-model demo)")
    return path
