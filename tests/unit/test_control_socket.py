"""The control socket's life: mode and group, one daemon per socket, stale sockets, the HTTP edges."""

from __future__ import annotations

import grp
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from supervisor.control.client import ControlClient
from supervisor.control.server import ControlServer
from supervisor.core.status import ModelStatus
from supervisor.errors import ControlError

from .fakes import FakeController

GEMMA = ModelStatus(name="gemma", state="RUNNING", port=8081, container_id="3f2a9c1d", image_id=None,
                    uptime_s=5.0, restarts=0, last_exit_code=None, reason="")


def one_model(pid: int) -> FakeController:
    """The shared fake with one model, GEMMA, whose log is one line."""
    controller = FakeController([GEMMA], pid=pid)
    controller.log_lines = [b"hello\n"]
    return controller


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    with capture_logs():
        yield


def test_socket_is_0660_in_a_new_0755_directory(sock_dir: Path) -> None:
    path = sock_dir / "run" / "control.sock"
    with ControlServer(one_model(1234), path):
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o755
        assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp name left
        with ControlClient(path) as client:
            assert client.pid() == 1234
    assert not path.exists()


def test_group_owns_socket_and_new_directory(sock_dir: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    path = sock_dir / "run" / "control.sock"
    with ControlServer(one_model(1), path, group=group, mode=0o600):
        assert os.stat(path).st_gid == os.getgid()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o750


def test_unknown_group_is_refused(sock_dir: Path) -> None:
    with pytest.raises(ControlError, match="no group named 'no-such-group-xyz'"):
        ControlServer(one_model(1), sock_dir / "control.sock", group="no-such-group-xyz").start()


def test_second_server_on_the_same_path_is_refused_with_the_pid(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    with ControlServer(one_model(1234), path):
        with pytest.raises(ControlError) as e:
            ControlServer(one_model(5678), path).start()
        assert str(e.value) == f"another llama-supervisord (pid 1234) holds {path}"
        with ControlClient(path) as client:  # the first one is untouched
            assert client.pid() == 1234


def test_live_daemon_without_the_lock_is_not_replaced(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    with ControlServer(one_model(1234), path):
        (sock_dir / "control.sock.lock").unlink()  # as if it ran in another mount namespace
        with pytest.raises(ControlError, match=r"\(pid 1234\) holds"):
            ControlServer(one_model(5678), path).start()


def test_stale_socket_file_is_recovered(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a daemon that died: the file stays, nobody listens
    dead.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with ControlServer(one_model(99), path):
        with ControlClient(path) as client:
            assert client.pid() == 99


def test_a_file_that_is_not_a_socket_is_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    path.write_text("not mine")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        ControlServer(one_model(1), path).start()
    assert path.read_text() == "not mine"


def test_a_closed_server_gives_the_path_back(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    first = ControlServer(one_model(1), path)
    first.start()
    first.close()
    assert not path.exists()
    with ControlServer(one_model(2), path), ControlClient(path) as client:
        assert client.pid() == 2


def test_http_edges(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    with ControlServer(one_model(7), path):
        http = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://x")
        assert http.get("/v1/version").json() == {"api": "v1", "version": "0.1.0", "pid": 7}
        assert http.get("/v2/status").status_code == 404
        assert http.get("/v1/nothing").status_code == 404
        assert http.get("/v1/start").status_code == 405
        assert http.post("/v1/start", content=b"{oops").status_code == 400
        assert http.post("/v1/start", json={"names": []}).status_code == 400
        assert http.post("/v1/start", json={"names": ["gemma"], "wait": "yes"}).status_code == 400
        status = http.get("/v1/status", params={"name": ["gemma", "nope"]})
        assert status.status_code == 404
        assert status.json()["unknown"] == ["nope"]
        assert http.get("/v1/logs", params={"name": "nope"}).status_code == 404
        assert http.get("/v1/logs", params={"name": "gemma"}).content == b"hello\n"
        http.close()
        with ControlClient(path) as client:
            with pytest.raises(ControlError, match="no such model: nope"):
                list(client.logs("nope"))
            assert client.status(["gemma", "nope"]).unknown == ("nope",)


def test_client_reports_a_socket_nobody_answers(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with ControlClient(path) as client, pytest.raises(ControlError) as e:
        client.pid()
    assert str(e.value) == (f"llama-supervisord is not running (nobody answers on {path}): "
                            "start it with 'systemctl start llama-supervisor' or 'make run'")
    assert e.value.exit_code == 4


# --- socket activation: the socket is systemd's ----------------------------------------------------

@pytest.fixture
def activated(sock_dir: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A listening socket as llama-supervisor-control.socket makes it (SocketMode=0660); the test keeps
    this copy, as systemd keeps its own, and the server gets a dup of it."""
    path = sock_dir / "control.sock"
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.bind(str(path))
    os.chmod(path, 0o660)
    held.listen(16)
    yield held, path
    held.close()


def _dup(sock: socket.socket) -> socket.socket:
    return socket.socket(fileno=os.dup(sock.fileno()))


def test_inherited_socket_is_served_and_left_in_place(activated: tuple[socket.socket, Path]) -> None:
    held, path = activated
    inode = os.stat(path).st_ino
    with ControlServer(one_model(1234), path, inherited=_dup(held)):
        with ControlClient(path) as client:
            assert client.pid() == 1234
        assert os.stat(path).st_ino == inode                 # not replaced by a socket of its own
    assert os.stat(path).st_ino == inode                     # nor removed: it is systemd's
    # The next daemon's connection waits in the kernel's queue (systemd's copy listens): not refused.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(path))
        held.settimeout(5)
        conn, _ = held.accept()
        conn.close()


@pytest.mark.parametrize("mode", [0o666, 0o662, 0o602])
def test_inherited_socket_open_to_others_is_refused(activated: tuple[socket.socket, Path], mode: int) -> None:
    held, path = activated
    os.chmod(path, mode)
    with pytest.raises(ControlError, match=f"mode {mode:04o}: anyone could use it \\(fix: SocketMode=0660"):
        ControlServer(one_model(1), path, inherited=_dup(held)).start()
    assert not (path.parent / "control.sock.lock").exists() or _lock_free(path)


def test_inherited_socket_others_may_read_but_not_write_is_served(activated: tuple[socket.socket, Path]) -> None:
    held, path = activated
    os.chmod(path, 0o644)       # systemd-socket-activate's mode: connecting takes write access
    with ControlServer(one_model(7), path, inherited=_dup(held)):
        with ControlClient(path) as client:
            assert client.pid() == 7


def _lock_free(path: Path) -> bool:
    import fcntl

    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_inherited_socket_of_another_group_is_refused(activated: tuple[socket.socket, Path]) -> None:
    held, path = activated
    others = [g for g in grp.getgrall() if g.gr_gid != os.stat(path).st_gid]
    with pytest.raises(ControlError, match=f"not {others[0].gr_name} \\(fix: SocketGroup={others[0].gr_name}"):
        ControlServer(one_model(1), path, group=others[0].gr_name, inherited=_dup(held)).start()


def test_inherited_socket_elsewhere_is_refused(activated: tuple[socket.socket, Path], sock_dir: Path) -> None:
    held, _ = activated
    with pytest.raises(ControlError, match="is not .*other.sock, the control socket this daemon serves"):
        ControlServer(one_model(1), sock_dir / "other.sock", inherited=_dup(held)).start()
