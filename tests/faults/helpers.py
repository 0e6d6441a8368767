"""Shared pieces of the fault suite: manifests with the knobs faults need, and status through the socket."""

from __future__ import annotations

import uuid
from pathlib import Path

from integration.daemon_harness import Daemon, free_port
from supervisor.control.client import ControlClient
from supervisor.core.status import ModelStatus


def uid(prefix: str) -> str:
    """A model name no other test (or engineer) on this engine uses."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def fault_yaml(name: str, port: int, model_path: Path, sha256: str, *, memory: str = "1g",
               max_failures: int = 3, backoff_initial: float = 0.5, api_key_file: Path | None = None,
               ctx: int = 512) -> str:
    key = f"  api_key_file: {api_key_file}\n" if api_key_file else ""
    return f"""\
kind: model
name: {name}
source:
  path: {model_path}
  sha256: {sha256}
profile: auto
server:
  port: {port}
  ctx_size: {ctx}
  threads: 1
{key}health:
  interval: 1
  timeout: 1
  failures: 2
restart:
  backoff_initial: {backoff_initial}
  backoff_max: 2
  max_failures: {max_failures}
resources:
  memory: {memory}
  pids: 128
"""


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


def new_port() -> int:
    return free_port()
