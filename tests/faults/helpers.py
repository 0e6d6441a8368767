"""Shared pieces of the fault suite: manifests with the knobs faults need, and status through the socket."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from integration.daemon_harness import Daemon, free_port, model_yaml
from supervisor.control.client import ControlClient
from supervisor.core.status import ModelStatus


def uid(prefix: str) -> str:
    """A model name no other test (or engineer) on this engine uses."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def fault_yaml(name: str, port: int, model_path: Path, sha256: str, *, memory: str = "1g",
               max_failures: int = 3, backoff_initial: float = 0.5, api_key_file: Path | None = None,
               ctx: int = 512) -> str:
    """The harness's light manifest with a short backoff, so crash loops reach FATAL in seconds."""
    restart = (f"restart:\n  backoff_initial: {backoff_initial}\n  backoff_max: 2\n"
               f"  max_failures: {max_failures}\n")
    return model_yaml(name, port, model_path, sha256, ctx=ctx, memory=memory, api_key_file=api_key_file,
                      restart=restart)


def write_manifest(directory: Path, name: str, text: str) -> Path:
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    path = directory / f"{name}.yaml"
    tmp.rename(path)                 # as editors save: write aside, rename over
    return path


def status(d: Daemon, name: str) -> ModelStatus | None:
    with ControlClient(d.sockdir / "ctl.sock", timeout=5) as c:
        found = [m for m in c.status().models if m.name == name]
    return found[0] if found else None


def status_in(d: Daemon, name: str, state: str, timeout: float = 5.0) -> ModelStatus:
    """The model's status once the socket reports `state`. The loop logs a transition during its pass
    and publishes the snapshot `status` reads at the pass's end, so a status asked for the moment the log
    line arrives can be one pass old. Waiting a few seconds for the published one is the operator's view;
    a snapshot that never reaches `state` fails here with the last one seen."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(d, name)
        if st is not None and st.state == state:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: status never said {state} in {timeout} s; last: {st}")
        time.sleep(0.05)


def new_port() -> int:
    return free_port()
