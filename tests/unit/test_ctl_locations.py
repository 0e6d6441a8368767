"""Commands that work on local state find the running daemon's (issue 20): `make run` keeps its lock and
cache under var/, and `llama-supervisorctl verify | hardware | fetch-model` in a second shell, without the
Makefile's variables, must use them, asking the daemon over its control socket (GET /v1/paths)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

from supervisor import paths
from supervisor.cli import ctl
from supervisor.cli.where import merge
from supervisor.control.api import Command, CommandResult
from supervisor.control.client import ControlClient
from supervisor.control.server import ControlServer
from supervisor.core.status import ModelStatus
from supervisor.errors import ControlError, SupervisorError
from supervisor.artifacts.lock import BinaryRecord, ImageLock, write_lock

PID = 4321
BINARY = BinaryRecord(variant="cpu-avx2", path="/srv/var/state/bin/llama-server-cpu-avx2", sha256="b" * 64,
                      version="version: 1 (x)", build_number=1, flags=frozenset({"--port"}), source_sha256="c" * 64,
                      built_at="2026-01-01T00:00:00Z", origin="native")
TINY = b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 16
TINY_SHA = hashlib.sha256(TINY).hexdigest()
LOCATION_VARS = (paths.STATE_ENV, paths.CACHE_ENV, paths.LOCK_ENV, paths.MANIFESTS_ENV)


class FakeDaemon:
    """What the control server needs of a daemon for these commands: only its pid."""

    def status(self, names: tuple[str, ...] = ()) -> list[ModelStatus]:
        return []

    def submit(self, command: Command) -> Future[CommandResult]:
        raise AssertionError(f"no command expected, got {command}")

    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        raise AssertionError("no logs expected")

    def pid(self) -> int:
        return PID


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    with capture_logs():
        yield


@pytest.fixture
def second_shell(monkeypatch: pytest.MonkeyPatch, sock_dir: Path) -> Path:
    """A shell without the Makefile's variables; the socket at the place both find (here: the env's)."""
    for var in LOCATION_VARS:
        monkeypatch.setenv(var, "set-by-make")     # recorded, so that teardown restores the real value
        monkeypatch.delenv(var)
    sock = sock_dir / "control.sock"
    monkeypatch.setenv("LLAMA_SUPERVISOR_SOCKET", str(sock))
    return sock


def make_run_state(root: Path) -> paths.Locations:
    """What `make run` leaves: var/state with a lock (a native binary), var/cache with the model fetched."""
    where = paths.Locations(root / "var" / "state", root / "var" / "cache",
                            root / "var" / "state" / "images.lock.json", root / "manifests")
    write_lock(where.lock, ImageLock().with_binary(BINARY))
    cached = where.cache_dir / "models" / TINY_SHA / "tiny.gguf"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(TINY)
    where.manifests.mkdir()
    (where.manifests / "tiny.yaml").write_text(
        f"kind: model\nname: tiny\nsource:\n  url: http://127.0.0.1:9/tiny.gguf\n  sha256: {TINY_SHA}\n"
        "server:\n  port: 18081\n")
    return where


def invoke(*args: str) -> Result:
    return CliRunner().invoke(ctl.cli, list(args))


def error(result: Result) -> str:
    """The error llama-supervisorctl's main() would print (CliRunner bypasses main)."""
    assert isinstance(result.exception, SupervisorError), result.output
    return f"error: {result.exception}"


def test_verify_hardware_and_fetch_model_in_a_second_shell_use_the_running_daemons_state(
    tmp_path: Path, second_shell: Path
) -> None:
    where = make_run_state(tmp_path)
    daemons = f"(the running daemon's, pid {PID})"
    with ControlServer(FakeDaemon(), second_shell, locations=where):
        hw = invoke("hardware", "--json")
        assert hw.exit_code == 0, hw.output
        body = json.loads(hw.output)
        assert body["native_binaries"] == {"cpu-avx2": BINARY.path}, "the binary the daemon's lock records"
        assert (body["state_dir"], body["lock"]) == (str(where.state_dir), str(where.lock))
        text = invoke("hardware")
        assert f"state:     state dir {where.state_dir}, cache dir {where.cache_dir} {daemons}" in text.output

        verify = invoke("verify")
        assert f"error: {where.lock} records no image" in error(verify)   # the daemon's lock: a binary, no image
        assert f"using state dir {where.state_dir}, cache dir {where.cache_dir} {daemons}" in verify.stderr

        fetch = invoke("fetch-model")
        assert fetch.exit_code == 0, fetch.output
        assert f"tiny: {where.cache_dir / 'models' / TINY_SHA / 'tiny.gguf'} OK" in fetch.stdout
    assert not any(os.environ.get(v) for v in LOCATION_VARS), "the command's variables leaked out of it"


def test_what_the_operator_set_wins_over_the_daemons_answer(
    tmp_path: Path, second_shell: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = make_run_state(tmp_path)
    mine = tmp_path / "mine"
    monkeypatch.setenv(paths.STATE_ENV, str(mine))
    with ControlServer(FakeDaemon(), second_shell, locations=where):
        verify = invoke("verify")
    assert f"error: {mine / 'images.lock.json'} records no image" in error(verify)
    assert (f"using state dir {mine} (from ${paths.STATE_ENV}); "
            f"cache dir {where.cache_dir} (the running daemon's, pid {PID})") in verify.stderr


def test_with_no_daemon_the_defaults_apply_and_the_command_says_so(
    tmp_path: Path, second_shell: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "images.lock.json"
    monkeypatch.setenv(paths.LOCK_ENV, str(lock))       # read-only and hermetic: not the host's default lock
    verify = invoke("verify")
    assert f"error: {lock} records no image" in error(verify)
    assert (f"state dir {paths.state_dir()}, cache dir {paths.cache_dir()} "
            f"(default; no daemon answers on {second_shell})") in verify.stderr
    assert f"lock {lock} (from ${paths.LOCK_ENV})" in verify.stderr


def test_a_daemon_answering_with_relative_paths_is_not_followed(tmp_path: Path, second_shell: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    odd = paths.Locations(Path("state"), Path("cache"), Path("state/images.lock.json"), Path("manifests"))
    lock = tmp_path / "images.lock.json"
    monkeypatch.setenv(paths.LOCK_ENV, str(lock))
    with ControlServer(FakeDaemon(), second_shell, locations=odd):
        with pytest.raises(ControlError, match="state_dir is 'state', not an absolute path"):
            ControlClient(second_shell).locations()
        verify = invoke("verify")
    assert f"error: {lock} records no image" in error(verify)
    assert f"(default; cannot ask the daemon on {second_shell}: " in verify.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the socket to another user needs root")
def test_a_socket_another_user_owns_is_not_asked(tmp_path: Path, second_shell: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    where = make_run_state(tmp_path)
    lock = tmp_path / "images.lock.json"
    monkeypatch.setenv(paths.LOCK_ENV, str(lock))
    with ControlServer(FakeDaemon(), second_shell, locations=where):
        os.chown(second_shell, 65534, -1)        # as if another user had made the per-user socket under /tmp
        verify = invoke("verify")
    assert f"state dir {paths.state_dir()}, cache dir {paths.cache_dir()} (default; {second_shell} belongs to uid " \
           "65534, not to you or root: not asked)" in verify.stderr


def test_merge_takes_each_location_from_the_operator_then_the_daemon_then_the_default() -> None:
    own = paths.Locations(Path("/own/state"), Path("/own/cache"), Path("/own/lock.json"), Path("/own/m"))
    daemon = paths.Locations(Path("/d/state"), Path("/d/cache"), Path("/d/state/images.lock.json"), Path("/d/m"))
    found = merge(own, {paths.CACHE_ENV: "/own/cache"}, daemon, daemon_why="daemon", default_why="default")
    assert found.locations == paths.Locations(Path("/d/state"), Path("/own/cache"), daemon.lock, Path("/d/m"))
    assert found.why == {"state_dir": "daemon", "cache_dir": f"from ${paths.CACHE_ENV}", "lock": "daemon",
                         "manifests": "daemon"}
    # the lock follows an explicit state dir: it is not taken from a daemon that keeps another
    found = merge(own, {paths.STATE_ENV: "/own/state"}, daemon, daemon_why="daemon", default_why="default")
    assert found.locations.lock == own.lock and found.why["lock"] == f"from ${paths.STATE_ENV}"
    found = merge(own, {}, None, daemon_why="daemon", default_why="default")
    assert found.locations == own and set(found.why.values()) == {"default"}
