"""The gateway's listening socket: connections it accepts send without Nagle's delay.

uvicorn writes a response in pieces (headers, body, end). With Nagle's algorithm on, each piece
after the first waits for the client's ACK, which Linux delays by up to 40 ms: every gateway
request took 44 ms instead of 0.6 ms (bench/gateway.py) until the socket said IPPROTO_TCP.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from supervisor.gateway.server import GatewayServer


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture
def server() -> Iterator[GatewayServer]:
    s = GatewayServer(app, "127.0.0.1:0")
    s.start()
    try:
        yield s
    finally:
        s.close()


def _server_side(peer: tuple[str, int]) -> socket.socket | None:
    """This process's socket whose peer is `peer` (the server's end of a client connection)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:
            continue
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        try:
            if s.family == socket.AF_INET and s.getpeername() == peer:
                return s
        except OSError:
            pass
        s.close()
    return None


def test_accepted_connections_have_nagle_off(server: GatewayServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        found, deadline = None, time.monotonic() + 5
        while found is None and time.monotonic() < deadline:
            found = _server_side(client.getsockname())
            time.sleep(0.01)
        assert found is not None, "the gateway never accepted the connection"
        with found:
            assert found.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, \
                "Nagle is on: every response piece after the first waits for the client's delayed ACK"


def test_the_server_answers_over_that_socket(server: GatewayServer) -> None:
    r = httpx.get(f"http://127.0.0.1:{server.port}/", timeout=5, trust_env=False)
    assert r.status_code == 200 and r.text == "ok"
