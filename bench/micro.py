"""Benchmarks with no containers: the planner on 200 models, `status` with 100 models."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

from bench.stats import Sample, timed
from supervisor.control.api import Command, CommandResult
from supervisor.control.client import ControlClient
from supervisor.control.server import ControlServer
from supervisor.core.observed import ObservedContainer
from supervisor.core.planner import Want, plan
from supervisor.core.spec import ContainerSpec, DesiredModel, Mount
from supervisor.core.status import ModelStatus


def desired_models(n: int) -> dict[str, DesiredModel]:
    out = {}
    for i in range(n):
        name = f"model-{i:03d}"
        spec = ContainerSpec(
            model=name, image="llama-supervisor/llama-server:cpu-avx2", image_id="sha256:" + "a" * 64,
            argv=("--model", f"/models/m{i}.gguf", "--host", "0.0.0.0", "--port", "8080", "--ctx-size", "2048",
                  "--threads", "2", "--parallel", "1"),
            model_sha256=f"{i:064x}", mounts=(Mount(f"/srv/models/m{i}.gguf", f"/models/m{i}.gguf"),),
            host_ip="127.0.0.1", host_port=9000 + i, memory_bytes=1 << 30,
        )
        out[name] = DesiredModel(name=name, spec=spec, model_path=f"/srv/models/m{i}.gguf")
    return out


def observed_for(desired: dict[str, DesiredModel], changed_every: int = 0) -> list[ObservedContainer]:
    out = []
    for i, (name, d) in enumerate(sorted(desired.items())):
        h = d.spec.config_hash()
        if changed_every and i % changed_every == 0:
            h = "0" * 64
        out.append(ObservedContainer(id=f"{i:012x}", name=f"llama-supervisor-{name}", model=name,
                                     config_hash=h, status="running"))
    return out


def bench_plan(n: int = 200, runs: int = 50) -> dict[str, Sample]:
    desired = desired_models(n)
    wants = {k: Want(v, run=True) for k, v in desired.items()}
    steady = observed_for(desired)
    tenth_changed = observed_for(desired, changed_every=10)
    assert plan(wants, steady) == []
    assert len(plan(wants, tenth_changed)) == n // 10
    # The first pass after a reload meets specs whose config hashes were never
    # computed (ContainerSpec caches its hash); give each timed run fresh ones.
    fresh = iter([{k: Want(v, run=True) for k, v in desired_models(n).items()} for _ in range(runs)])
    return {
        "first pass after a reload (every config hash computed)": timed(lambda: plan(next(fresh), steady), runs),
        "steady": timed(lambda: plan(wants, steady), runs),
        "10% changed": timed(lambda: plan(wants, tenth_changed), runs),
        "cold (nothing running)": timed(lambda: plan(wants, []), runs),
    }


class _StaticController:
    def __init__(self, n: int) -> None:
        self._models = [
            ModelStatus(name=f"model-{i:03d}", state="RUNNING", port=9000 + i, container_id=f"{i:012x}",
                        image_id="sha256:" + "a" * 64, uptime_s=3600.0 + i, restarts=i % 3,
                        last_exit_code=None, reason="")
            for i in range(n)
        ]

    def status(self, names: tuple[str, ...] = ()) -> list[ModelStatus]:
        return [m for m in self._models if not names or m.name in names]

    def submit(self, command: Command) -> Future[CommandResult]:
        f: Future[CommandResult] = Future()
        f.set_result(CommandResult(ok=True))
        return f

    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        return iter(())

    def pid(self) -> int:
        return os.getpid()


def bench_status(n: int = 100, runs: int = 200, cli_runs: int = 10) -> dict[str, Sample]:
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "control.sock"
        server = ControlServer(_StaticController(n), sock)
        server.start()
        try:
            with ControlClient(sock) as client:
                assert len(client.status().models) == n
                api = timed(lambda: client.status(), runs)
            ctl = str(Path(sys.executable).with_name("llama-supervisorctl"))
            env = {**os.environ, "LLAMA_SUPERVISOR_SOCKET": str(sock)}

            def cli() -> None:
                out = subprocess.run([ctl, "status"], env=env, capture_output=True, text=True, check=True)
                assert out.stdout.count("RUNNING") == n
            cli_sample = timed(cli, cli_runs)
        finally:
            server.close()
    return {"socket round trip (client.status)": api, "whole command (llama-supervisorctl status, new process)": cli_sample}


if __name__ == "__main__":
    for k, v in bench_plan().items():
        print(f"plan(200) {k}: {v.fmt('ms', 1000)}")
    for k, v in bench_status().items():
        print(f"status(100) {k}: {v.fmt('ms', 1000)}")
