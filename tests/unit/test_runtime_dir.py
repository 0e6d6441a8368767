"""Issue 15, item 9: without XDG_RUNTIME_DIR a non-root daemon and ctl use /tmp/llama-supervisor-<uid>/;
one another user made first (mode 0777, their own, a symlink) is refused, not used."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from supervisor.errors import ConfigError
from supervisor.paths import private_dir, socket_path, user_socket_path


def test_an_absent_directory_is_created_0700(tmp_path: Path) -> None:
    d = private_dir(tmp_path / "rt")
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700 and os.lstat(d).st_uid == os.getuid()
    assert private_dir(d) == d                                    # ours and 0700: accepted as it is


def test_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "rt"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(ConfigError, match=rf"{d} has mode 0777.*chmod 700"):
        private_dir(d)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another uid needs root")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "rt"
    d.mkdir(mode=0o700)
    os.chown(d, 54321, 54321)
    with pytest.raises(ConfigError, match=rf"{d} belongs to uid 54321, not to uid {os.getuid()}"):
        private_dir(d)


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_symlink_or_a_file_is_refused(tmp_path: Path, kind: str) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    d = tmp_path / "rt"
    if kind == "symlink":
        d.symlink_to(real)                                        # even to a directory of our own
    else:
        d.write_text("")
    with pytest.raises(ConfigError, match=rf"{d} is not a directory"):
        private_dir(d)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another uid needs root")
def test_a_users_socket_path_refuses_a_hostile_tmp_directory(tmp_path: Path) -> None:
    """The wiring ctl and daemon share (paths.socket_path as a user): without XDG_RUNTIME_DIR the socket
    lives in <tmp>/llama-supervisor-<uid>, which root (here: anyone else) created 0777 first."""
    uid = 54321
    d = tmp_path / f"llama-supervisor-{uid}"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(ConfigError, match=rf"{d} belongs to uid 0, not to uid {uid}"):
        user_socket_path(uid, None, tmp=tmp_path)
    os.chown(d, uid, uid)
    with pytest.raises(ConfigError, match="mode 0777"):
        user_socket_path(uid, None, tmp=tmp_path)
    d.chmod(0o700)
    assert user_socket_path(uid, None, tmp=tmp_path) == d / "llama-supervisor" / "control.sock"
    assert user_socket_path(uid, "/run/user/54321") == Path("/run/user/54321/llama-supervisor/control.sock")


def test_socket_path_as_root_or_by_env_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_SOCKET", "/x/control.sock")
    assert socket_path() == Path("/x/control.sock")
