"""Socket activation: sd_listen_fds semantics (daemon/listenfds.py) and the checks of what is inherited
(cli/listeners.py), in a child process that really holds the sockets at fds 3, 4, ... as systemd passes them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.daemon.listenfds import Passed, listen_fds, listening_socket
from supervisor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


# --- the variables ------------------------------------------------------------------------------

def test_nothing_passed_is_no_sockets() -> None:
    env = {"PATH": "/bin"}
    assert listen_fds(env, pid=42, cloexec=False) == []
    assert env == {"PATH": "/bin"}


def test_names_in_order_and_the_variables_removed() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "gateway:control", "KEEP": "1"}
    assert listen_fds(env, pid=42, cloexec=False) == [Passed(3, "gateway"), Passed(4, "control")]
    assert env == {"KEEP": "1"}      # a child never sees them


def test_without_names_each_is_unknown() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "1"}
    assert listen_fds(env, pid=42, cloexec=False) == [Passed(3, "unknown")]


def test_meant_for_another_pid_is_ignored_and_still_removed() -> None:
    env = {"LISTEN_PID": "41", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "gateway"}
    assert listen_fds(env, pid=42, cloexec=False) == []
    assert env == {}


@pytest.mark.parametrize(("env", "says"), [
    ({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, "LISTEN_PID='x'"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1'"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "100000"}, "LISTEN_FDS='100000'"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "gateway"}, "names 1 sockets but LISTEN_FDS=2"),
])
def test_bad_values_are_named(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match="fix:") as e:
        listen_fds(env, pid=42, cloexec=False)
    assert says in str(e.value)
    assert env == {}


# --- one socket, checked ------------------------------------------------------------------------

@pytest.fixture
def tcp_listening() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


def test_a_listening_tcp_socket_is_taken(tcp_listening: socket.socket) -> None:
    sock = listening_socket(Passed(os.dup(tcp_listening.fileno()), "gateway"), (socket.AF_INET, socket.AF_INET6))
    try:
        assert sock.getsockname() == tcp_listening.getsockname()
        assert sock.proto == socket.IPPROTO_TCP       # read from the fd: asyncio then turns Nagle off
    finally:
        sock.close()


@pytest.mark.parametrize(("make", "says"), [
    (lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), "not a stream socket"),
    (lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), "not listening"),
    (lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), "AF_UNIX, not AF_INET or AF_INET6"),
])
def test_what_is_not_a_listening_tcp_socket_is_refused(make: object, says: str) -> None:
    s = make()  # type: ignore[operator]
    fd = os.dup(s.fileno())
    s.close()
    with pytest.raises(ConfigError, match=says):
        listening_socket(Passed(fd, "gateway"), (socket.AF_INET, socket.AF_INET6))
    with pytest.raises(OSError):
        os.fstat(fd)          # closed on the way out


# --- in a child that holds them at fds 3.. ------------------------------------------------------

CHILD = """
import json, os, sys, fcntl
from supervisor.cli.listeners import inherit
from supervisor.errors import ConfigError
try:
    got = inherit(gateway_listen=None if sys.argv[1] == "-" else sys.argv[1])
except ConfigError as e:
    print(json.dumps({"error": str(e)})); sys.exit(2)
out = {"env": sorted(k for k in os.environ if k.startswith("LISTEN_"))}
for name in ("gateway", "control"):
    s = getattr(got, name)
    out[name] = None if s is None else {
        "fd": s.fileno(), "name": s.getsockname() if name == "control" else list(s.getsockname()[:2]),
        "cloexec": bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)}
print(json.dumps(out))
"""


def run_child(socks: list[socket.socket], names: str | None, gateway_listen: str | None,
              pid: str = "$$") -> tuple[int, dict[str, object]]:
    """The child at the end of `sh -c 'LISTEN_PID=$$ exec python'` (the sh's pid becomes python's, as
    systemd-socket-activate's own exec does), with `socks` at fds 3, 4, ..."""
    high = [os.dup(s.fileno()) for s in socks]     # out of the way of fds 3.. before they are placed

    def place() -> None:
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)                       # dup2's copy is inheritable

    env = {**os.environ, "PYTHONPATH": str(ROOT), "LISTEN_FDS": str(len(socks))}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    try:
        proc = subprocess.run(
            ["sh", "-c", f'LISTEN_PID={pid} exec "$0" -c "$1" "$2"', sys.executable, CHILD, gateway_listen or "-"],
            env=env, preexec_fn=place, close_fds=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    finally:
        for fd in high:
            os.close(fd)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def unix_listening(tmp_path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "control.sock"))
    s.listen()
    yield s
    s.close()


def test_gateway_and_control_inherited(tcp_listening: socket.socket, unix_listening: socket.socket) -> None:
    host, port = tcp_listening.getsockname()
    rc, out = run_child([tcp_listening, unix_listening], "gateway:control", f"{host}:{port}")
    assert rc == 0, out
    assert out["gateway"] == {"fd": 3, "name": [host, port], "cloexec": True}
    assert out["control"] == {"fd": 4, "name": unix_listening.getsockname(), "cloexec": True}
    assert out["env"] == []                          # removed, so no child of the daemon takes them


def test_localhost_names_the_loopback_address(tcp_listening: socket.socket) -> None:
    rc, out = run_child([tcp_listening], "gateway", f"localhost:{tcp_listening.getsockname()[1]}")
    assert rc == 0, out


def test_not_for_us_when_the_pid_is_another(tcp_listening: socket.socket) -> None:
    rc, out = run_child([tcp_listening], "gateway", "127.0.0.1:1", pid="1")
    assert rc == 0, out
    assert out["gateway"] is None and out["env"] == []


@pytest.mark.parametrize(("names", "listen", "says"), [
    ("gateway", "127.0.0.1:1", "bound to 127.0.0.1:"),                 # another port than configured
    ("gateway", "[::1]:{port}", "--gateway-listen says [::1]"),        # another address
    ("gateway", None, "--no-gateway"),
    ("web", "127.0.0.1:{port}", "named 'web'"),
    (None, "127.0.0.1:{port}", "named 'unknown'"),
    ("control", "127.0.0.1:{port}", "AF_INET, not AF_UNIX"),          # the TCP socket named control
])
def test_what_is_not_the_configured_socket_is_refused(tcp_listening: socket.socket, names: str | None,
                                                      listen: str | None, says: str) -> None:
    port = tcp_listening.getsockname()[1]
    rc, out = run_child([tcp_listening], names, listen.format(port=port) if listen else None)
    assert rc == 2, out
    assert says in str(out["error"]) and "fix:" in str(out["error"]), out


def test_two_sockets_of_one_name_are_refused(tcp_listening: socket.socket) -> None:
    port = tcp_listening.getsockname()[1]
    rc, out = run_child([tcp_listening, tcp_listening], "gateway:gateway", f"127.0.0.1:{port}")
    assert rc == 2 and "two inherited sockets are named 'gateway'" in str(out["error"]), out
