"""Daemon restarts against the real engine: kill -9 and start again adopts the running containers.

Its own module: the module-scoped daemon of test_daemon.py must be gone first
(a daemon removes managed containers it has no manifest for).
"""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from .daemon_harness import Daemon, identity, remove_models, wait_for
from .test_daemon import LOAD_TIMEOUT, Pair, both_healthy

pytestmark = pytest.mark.docker


def test_daemon_kill9_and_restart_adopts_containers(
    tmp_path: Path, docker_client: docker.DockerClient, image_record: object, demo_model: Path
) -> None:
    p = Pair(tmp_path, demo_model)
    d = Daemon(p.dir).start()
    try:
        wait_for(lambda: both_healthy(p), LOAD_TIMEOUT, "both models healthy")
        before = {m: identity(docker_client, m) for m in (p.a, p.b)}
        d.kill9()
        d2 = Daemon(p.dir).start()
        try:
            for m in (p.a, p.b):
                d2.wait_log(lambda r, m=m: r.get("event") == "adopted" and r.get("model") == m, 30, f"{m} adopted")
                d2.wait_log(lambda r, m=m: r.get("event") == "transition" and r.get("model") == m
                            and r.get("to") == "RUNNING", 30, f"{m} RUNNING")
        except AssertionError:
            print(d2.dump())
            raise
        assert {m: identity(docker_client, m) for m in (p.a, p.b)} == before
        assert d2.terminate() == 0
        # SIGTERM leaves the models running by default
        assert {m: identity(docker_client, m) for m in (p.a, p.b)} == before
        assert both_healthy(p)
    finally:
        if d.proc and d.proc.poll() is None:
            d.kill9()
        remove_models(docker_client, [p.a, p.b])
