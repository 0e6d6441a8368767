"""Builders for unit tests: DesiredModels and observed containers without manifests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from supervisor.core.observed import ContainerStatus, ObservedContainer
from supervisor.core.spec import ContainerSpec, DesiredModel, HealthPolicy, Mount, RestartSettings, Serving


def desired(name: str, *, port: int = 8081, ctx: int = 512, **kw: object) -> DesiredModel:
    spec = ContainerSpec(
        model=name,
        image="llama-supervisor/llama-server:cpu-avx2",
        image_id="sha256:" + "1" * 64,
        argv=("--model", "/models/m.gguf", "--ctx-size", str(ctx), "--host", "0.0.0.0", "--port", "8080"),
        model_sha256="a" * 64,
        mounts=(Mount("/srv/m.gguf", "/models/m.gguf"),),
        host_ip="127.0.0.1",
        host_port=port,
        memory_bytes=1 << 30,
    )
    return DesiredModel(
        name=name, spec=spec, model_path="/srv/m.gguf",
        health=kw.pop("health", HealthPolicy()),  # type: ignore[arg-type]
        restart=kw.pop("restart", RestartSettings()),  # type: ignore[arg-type]
        serving=kw.pop("serving", Serving(memory_bytes=1 << 30, memory_basis="limit")),  # type: ignore[arg-type]
    )


def observed(d: DesiredModel | str, *, cid: str | None = None, status: ContainerStatus = "running",
             config_hash: str | None = None) -> ObservedContainer:
    name = d if isinstance(d, str) else d.name
    h = config_hash if config_hash is not None else ("x" * 64 if isinstance(d, str) else d.spec.config_hash())
    return ObservedContainer(id=cid or f"c-{name}", name=f"llama-supervisor-{name}", model=name,
                             config_hash=h, status=status)


def exited_process_record(state_dir: Path, log: Path) -> None:
    """A process runtime's record of model "m" (id "p1"), exited, writing to `log`, under state_dir."""
    records = state_dir / "processes" / "default" / "records"
    records.mkdir(parents=True)
    (records / "p1.json").write_text(json.dumps({
        "id": "p1", "model": "m", "config_hash": "h", "instance": "default", "image_id": "binary-sha256:0",
        "binary": "/bin/false", "binary_sha256": "0", "argv": [], "env": {}, "uid": None, "gid": None,
        "rlimits": [], "memory_bytes": None, "pids_limit": 64, "workdir": str(state_dir), "log": str(log),
        "created_at": "", "status": "exited", "exit_code": 1}))


def until(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll `predicate` every 10 ms; whether it came true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False
