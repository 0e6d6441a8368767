"""A hostile local user on the control socket (docs/SECURITY.md, 'Control socket'): raw bytes, slow
clients, floods, bad names, a tail -f client that hangs up. Each answer is a 400/503 with a JSON
error or a closed connection, never a traceback and never a thread held for long."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from supervisor.control.api import Command, CommandResult
from supervisor.control.client import ControlClient
from supervisor.control.server import ControlServer
from supervisor.core.status import ModelStatus

GEMMA = ModelStatus(name="gemma", state="RUNNING", port=8081, container_id="3f2a9c1d", image_id=None,
                    uptime_s=5.0, restarts=0, last_exit_code=None, reason="")


class BlockingLog:
    """A followed log with no new lines: next() blocks until close(), as Docker's stream does."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.sent_history = False

    def __iter__(self) -> BlockingLog:
        return self

    def __next__(self) -> bytes:
        if not self.sent_history:
            self.sent_history = True
            return b"history\n"
        self.closed.wait()
        raise StopIteration

    def close(self) -> None:
        self.closed.set()


class Controller:
    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.streams: list[BlockingLog] = []

    def status(self, names: tuple[str, ...] = ()) -> list[ModelStatus]:
        return [GEMMA] if not names or "gemma" in names else []

    def submit(self, command: Command) -> Future[CommandResult]:
        self.commands.append(command)
        f: Future[CommandResult] = Future()
        f.set_result(CommandResult(ok=True))
        return f

    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        stream = BlockingLog()
        self.streams.append(stream)
        return stream

    def pid(self) -> int:
        return 42


@contextmanager
def _server(sock_dir: Path, *, read_timeout_s: float, request_deadline_s: float
            ) -> Iterator[tuple[Path, Controller, list[dict[str, object]]]]:
    path = sock_dir / "control.sock"
    ctl = Controller()
    with capture_logs() as logs, ControlServer(ctl, path, max_connections=4, read_timeout_s=read_timeout_s,
                                               request_deadline_s=request_deadline_s):
        yield path, ctl, logs
    # never a traceback, never an error logged for a client's bad input
    assert not [r for r in logs if r.get("log_level") in ("error", "critical") or r.get("exc_info")], logs


@pytest.fixture
def served(sock_dir: Path) -> Iterator[tuple[Path, Controller, list[dict[str, object]]]]:
    with _server(sock_dir, read_timeout_s=0.5, request_deadline_s=1.5) as s:
        yield s


@pytest.fixture
def patient(sock_dir: Path) -> Iterator[tuple[Path, Controller, list[dict[str, object]]]]:
    """A server whose read timeout and request deadline (60 s) are far past any client timeout here
    (10 s): a reply or a close that comes at all came from the logic under test, not from a timer."""
    with _server(sock_dir, read_timeout_s=60, request_deadline_s=60) as s:
        yield s


def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll until `predicate` holds; `timeout` is a generous bound on a slow shared host, not a measurement."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def raw(path: Path, data: bytes, *, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            s.sendall(data)
        except BrokenPipeError:       # the server answered (503) and closed before reading
            pass
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def status_and_body(reply: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Traceback" not in reply
    return int(head.split()[1]), json.loads(body)


def post(endpoint: str, body: bytes, *, length: str | None = None) -> bytes:
    n = str(len(body)) if length is None else length
    return f"POST /v1/{endpoint} HTTP/1.0\r\nContent-Length: {n}\r\n\r\n".encode("latin-1") + body


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "99999999999999999999", "\u00b2"])
def test_a_bad_content_length_is_a_400_at_once(patient: tuple[Path, Controller, list[dict[str, object]]],
                                               length: str) -> None:
    # "At once": the server's timers are 60 s, the client waits 10 s; a reply means no timer sent it.
    path, ctl, _ = patient
    code, body = status_and_body(raw(path, post("start", b'{"names": ["gemma"]}', length=length), timeout=10))
    assert code == 400 and "error" in body
    assert ctl.commands == []


def test_json_nested_past_the_recursion_limit_is_a_400(served: tuple[Path, Controller, list[dict[str, object]]]) -> None:
    path, _, _ = served
    code, body = status_and_body(raw(path, post("start", b"[" * 60000)))
    assert code == 400 and "not JSON" in str(body["error"])


@pytest.mark.parametrize("request_bytes", [b"GARBAGE\r\n\r\n", b"GET /v1/status HTTP/9.9\r\n\r\n",
                                           b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n"])
def test_malformed_http_is_a_json_error_not_a_500(served: tuple[Path, Controller, list[dict[str, object]]],
                                      request_bytes: bytes) -> None:
    path, _, _ = served
    code, body = status_and_body(raw(path, request_bytes))
    assert code in (400, 414, 505) and body["error"]        # never 500


@pytest.mark.parametrize("query", ["name=..%2F..%2Fetc", "name=%1b%5b2J", "name=" + "a" * 200])
def test_names_are_validated_before_use(served: tuple[Path, Controller, list[dict[str, object]]], query: str) -> None:
    path, ctl, _ = served
    for req in (f"GET /v1/status?{query} HTTP/1.0\r\n\r\n".encode(),
                f"GET /v1/logs?{query} HTTP/1.0\r\n\r\n".encode()):
        code, body = status_and_body(raw(path, req))
        assert code == 400 and "not a model name" in str(body["error"]), body
    code, _ = status_and_body(raw(path, post("stop", json.dumps({"names": ["gemma", "\x1b[2J"]}).encode())))
    assert code == 400 and ctl.commands == [] and ctl.streams == []


@pytest.mark.parametrize("lines", ["-1", "1000000000", "x", "%C2%B2"])
def test_log_line_counts_are_bounded(served: tuple[Path, Controller, list[dict[str, object]]], lines: str) -> None:
    path, ctl, _ = served
    code, _ = status_and_body(raw(path, f"GET /v1/logs?name=gemma&lines={lines} HTTP/1.0\r\n\r\n".encode()))
    assert code == 400 and ctl.streams == []


def test_a_silent_client_is_dropped_after_the_read_timeout(sock_dir: Path) -> None:
    # Time is the point: only the read timeout (0.5 s) can close this client before the deadline
    # (60 s); the 10 s client timeout bounds the wait generously for a loaded host.
    path = sock_dir / "control.sock"
    with capture_logs(), ControlServer(Controller(), path, read_timeout_s=0.5, request_deadline_s=60):
        assert raw(path, b"", timeout=10) == b""             # connected, said nothing: closed by the server


def test_a_trickling_client_is_dropped_at_the_request_deadline(sock_dir: Path) -> None:
    # Time is the point: a byte every 0.1 s passes a 60 s read timeout, and the request never ends,
    # so only the 1 s deadline can close it before the trickle runs out (40 s from now: the bound).
    path = sock_dir / "control.sock"
    with capture_logs(), ControlServer(Controller(), path, read_timeout_s=60, request_deadline_s=1.0), \
            socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        closed = False
        for byte in b"GET /v1/status HTTP/1.0\r\nX-Slow: " + b"a" * 400:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if select.select([s], [], [], 0.1)[0]:        # the pause between bytes, cut short by a close
                closed = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
                break
        assert closed, "the server kept the trickling client"


def test_a_flood_of_connections_gets_503_not_threads(patient: tuple[Path, Controller, list[dict[str, object]]]) -> None:
    path, _, _ = patient
    idle = []
    for _ in range(4):                                      # max_connections: 4, all held by silent clients
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        idle.append(s)
    try:
        # No pause needed: the server accepts in order, so these four hold their slots before the
        # fifth is looked at, and its 60 s timers cannot free one meanwhile.
        code, body = status_and_body(raw(path, b"GET /v1/status HTTP/1.0\r\n\r\n"))
        assert code == 503 and "too many" in str(body["error"])
    finally:
        for s in idle:
            s.close()

    def serves() -> bool:                                   # their threads end: the socket serves again
        code, _ = status_and_body(raw(path, b"GET /v1/status HTTP/1.0\r\n\r\n"))
        return code == 200

    until(serves, "the four closed connections give back their slots")


def test_tail_follow_ends_as_soon_as_the_client_hangs_up(served: tuple[Path, Controller, list[dict[str, object]]]) -> None:
    path, ctl, _ = served
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(path))
    s.sendall(b"GET /v1/logs?name=gemma&follow=1 HTTP/1.0\r\n\r\n")
    got = b""
    while b"history" not in got:
        got += s.recv(4096)
    assert len(ctl.streams) == 1 and not ctl.streams[0].closed.is_set()
    s.close()                                               # Ctrl-C in `tail -f`: no new log line will come
    # The log never yields again and the write timeout is 60 s: only the hang-up can close it; 10 s
    # is a generous bound on a loaded host, not the measure of "as soon as".
    assert ctl.streams[0].closed.wait(10), "the server kept following a log nobody reads"



def _follow(path: Path) -> tuple[socket.socket, bytes]:
    """Open a `tail -f`; returns the socket and what came first (the history line, or a refusal)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(path))
    s.sendall(b"GET /v1/logs?name=gemma&follow=1 HTTP/1.0\r\n\r\n")
    got = b""
    while b"history" not in got and (chunk := s.recv(4096)):
        got += chunk
    return s, got


def test_followers_have_their_own_cap_so_status_keeps_room(sock_dir: Path) -> None:
    """Issue 15, item 12: 32 `tail -f` filled every slot and `status` got 503 for as long as they stayed."""
    path = sock_dir / "control.sock"
    ctl = Controller()
    with ControlServer(ctl, path, max_connections=8, max_followers=2):
        held, refused = [], []
        for _ in range(8):                                   # as many followers as there are connections
            s, first = _follow(path)
            (held if b"history" in first else refused).append((s, first))
        try:
            assert len(held) == 2 and len(refused) == 6
            code, body = status_and_body(refused[0][1])
            assert code == 503 and "too many log followers (2" in str(body["error"])
            deadline = time.monotonic() + 5                  # the refused followers' threads end
            while True:
                try:
                    with ControlClient(path, timeout=5) as c:
                        assert [m.name for m in c.status().models] == ["gemma"]
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
            assert all(not st.closed.is_set() for st in ctl.streams)   # the two still follow
        finally:
            for s, _ in held + refused:
                s.close()
        assert all(st.closed.wait(3) for st in ctl.streams)
