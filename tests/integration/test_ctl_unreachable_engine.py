"""Every llama-supervisorctl command with DOCKER_HOST pointing at nothing: a message, never a traceback.

Each command runs as a new process, as an operator would run it. Commands that
need the engine (build, verify) exit 4 and say how to reach it; the others need
only files or the control socket (here also absent), and may succeed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cli import ctl
from supervisor.artifacts.lock import ImageLock, ImageRecord, write_lock

CTL = str(Path(sys.executable).with_name("llama-supervisorctl"))
NO_ENGINE = "unix:///nonexistent/docker.sock"

# Arguments that get each command as far as it goes; a command missing here fails
# test_every_command_is_covered, so a new command is tried too.
ARGS: dict[str, list[str]] = {
    "build": ["cpu-generic", "--quiet"],
    "verify": [],
    "fetch-model": [],
    "validate": [],
    "hardware": [],
    "schema": [],
    "status": [],
    "models": [],
    "start": ["m"],
    "stop": ["m"],
    "restart": ["m"],
    "reread": [],
    "update": [],
    "reload": [],
    "shutdown": [],
    "pid": [],
    "tail": ["m"],
    "bench": ["m"],
    "render": ["compose"],
    "deploy": ["status"],
    "unload": ["m"],
    "console": [],
    "push": ["--registry", "127.0.0.1:5999"],
    "pull": ["--registry", "127.0.0.1:5999"],
}
NEEDS_ENGINE = {"build", "verify", "deploy", "push"}
# Commands that stop at the lock, before the engine: a config error (2) saying what is missing.
STOP_AT_LOCK = {"pull": "records no image pushed to 127.0.0.1:5999"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("no-engine")
    (root / "manifests").mkdir()
    lock = root / "state" / "images.lock.json"
    write_lock(lock, ImageLock().with_record(ImageRecord(
        variant="cpu-generic", tag="llama-supervisor/llama-server:cpu-generic",
        image_id="sha256:" + "a" * 64, binary_sha256="b" * 64, version="version: 1 (x)", build_number=1,
        flags=frozenset({"--model"}), source_sha256="c" * 64, built_at="2026-01-01T00:00:00+00:00",
    )))
    e = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_SUPERVISOR_", "DOCKER_"))}
    e.update(
        DOCKER_HOST=NO_ENGINE,
        LLAMA_SUPERVISOR_STATE_DIR=str(root / "state"),
        LLAMA_SUPERVISOR_CACHE_DIR=str(root / "cache"),
        LLAMA_SUPERVISOR_MANIFESTS=str(root / "manifests"),
        LLAMA_SUPERVISOR_LOCK=str(lock),
        LLAMA_SUPERVISOR_SOCKET=str(root / "no-daemon.sock"),
    )
    return e


def test_every_command_is_covered() -> None:
    ctl._register()
    assert set(ctl.cli.commands) == set(ARGS)


@pytest.mark.parametrize("command", sorted(ARGS))
def test_command_without_engine_ends_in_a_message_not_a_traceback(command: str, env: dict[str, str]) -> None:
    out = subprocess.run([CTL, command, *ARGS[command]], capture_output=True, text=True, timeout=120,
                         env=env, stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    if command in STOP_AT_LOCK:
        assert out.returncode == 2 and STOP_AT_LOCK[command] in out.stderr, text
    elif command in NEEDS_ENGINE:
        assert out.returncode == 4, text
        assert "cannot reach the Docker engine" in out.stderr and "DOCKER_HOST" in out.stderr, text
    elif out.returncode != 0:
        # Only the daemon is missing: say so and how to start it.
        assert out.returncode == 4, text
        assert "error:" in out.stderr and "llama-supervisord" in out.stderr, text
