"""The gateway's graceful stop (GatewayServer.close): it stops accepting at once, lets a stream in flight
finish (up to its grace), and, on a socket inherited from systemd, leaves new connections queued in
the kernel for the next daemon instead of refused. The test plays systemd: it keeps a copy of the socket."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from supervisor.gateway.server import GatewayServer



def wait_until(pred: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class StreamApp:
    """Sends "first", then "last" once `release` is set (the stream in flight the test controls)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"last\n", "more_body": False})


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """The service manager's listening socket."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s
    s.close()


def _dup(sock: socket.socket) -> socket.socket:
    import os

    return socket.socket(fileno=os.dup(sock.fileno()))


def _not_accepting(server: GatewayServer) -> bool:
    servers = getattr(server._server, "servers", [])
    return bool(servers) and not any(s.is_serving() for s in servers)


def _start_stream(url: str, lines: list[str], errors: list[BaseException]) -> threading.Thread:
    def read() -> None:
        try:
            with httpx.stream("GET", url, timeout=30) as r:
                for line in r.iter_lines():
                    lines.append(line)
        except httpx.HTTPError as e:
            errors.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def test_stream_in_flight_finishes_and_new_connections_wait_for_the_next_daemon(held: socket.socket) -> None:
    app = StreamApp()
    port = held.getsockname()[1]
    server = GatewayServer(app, f"127.0.0.1:{port}", sock=_dup(held), grace_s=30)
    with capture_logs() as logs:
        server.start()
        lines: list[str] = []
        errors: list[BaseException] = []
        reader = _start_stream(f"http://127.0.0.1:{port}/v1/x", lines, errors)
        wait_until(lambda: lines == ["first"], what="the stream's first line")
        closer = threading.Thread(target=server.close, daemon=True)
        closer.start()
        wait_until(lambda: _not_accepting(server), what="the gateway to stop accepting")

        # A connection made now is not refused: it waits in the kernel's queue of the socket systemd holds.
        late = socket.create_connection(("127.0.0.1", port), timeout=5)
        late.sendall(b"GET /late HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert closer.is_alive()                  # still waiting for the stream in flight
        app.release.set()
        reader.join(10)
        closer.join(10)
        assert not closer.is_alive()
        assert (lines, errors) == (["first", "last"], [])     # the stream was not cut

        # ...and the next daemon (here: the test, on systemd's copy) gets it, request and all.
        held.settimeout(5)
        conn, _ = held.accept()
        conn.settimeout(5)
        assert conn.recv(4096).startswith(b"GET /late ")
        conn.close()
        late.close()
    assert any(e["event"] == "gateway: not accepting; letting requests in flight finish"
               and e["socket"] == "inherited: kept by the service manager" for e in logs), logs


def test_a_stream_longer_than_the_grace_is_cut() -> None:
    app = StreamApp()                 # never released
    server = GatewayServer(app, "127.0.0.1:0", grace_s=0.3)
    with capture_logs():
        server.start()
        lines: list[str] = []
        errors: list[BaseException] = []
        reader = _start_stream(f"http://127.0.0.1:{server.port}/v1/x", lines, errors)
        wait_until(lambda: lines == ["first"], what="the stream's first line")
        t0 = time.monotonic()
        server.close()
        took = time.monotonic() - t0
        reader.join(10)
    assert 0.3 <= took < 5, took
    assert lines == ["first"] and len(errors) == 1, (lines, errors)


def test_without_an_inherited_socket_the_port_refuses_once_closed() -> None:
    """What `make run` gets (no systemd holding the socket): the README says so."""
    server = GatewayServer(StreamApp(), "127.0.0.1:0", grace_s=1)
    with capture_logs():
        server.start()
        server.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
