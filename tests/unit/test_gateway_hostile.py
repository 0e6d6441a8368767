"""The gateway against hostile clients, over real sockets (issue 15: idle and half-sent connections,
stalled uploads, bodies that would fill memory, JSON that stalled the loop or raised RecursionError).

A real uvicorn server (GatewayServer) on 127.0.0.1, port 0, over a hand-written backend; raw sockets
play the clients. Waits are on the socket (a response, or its closing), never blind sleeps.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from supervisor.core.commands import Readiness
from supervisor.core.lifecycle import State
from supervisor.core.routing import Route, route_table
from supervisor.core.demand import Demand
from supervisor.gateway.app import GatewaySettings, create_app
from supervisor.gateway.body import Bodies, BodyLimits
from supervisor.gateway.connections import ConnectionLimits
from supervisor.gateway.server import GatewayServer

from .helpers import until

KiB, MiB = 1024, 1024 * 1024
PATH = b"/v1/chat/completions"


class Backend:
    """One model, "m", RUNNING on a port nothing listens on: the tests here never get that far."""

    def __init__(self) -> None:
        self.demand = Demand(time.monotonic)
        self.table = route_table((Route("m", State.RUNNING, "127.0.0.1", 9, start_timeout_s=0.2),))

    def routes(self) -> dict[str, Route]:
        return self.table

    def ensure(self, model: str) -> Future[Readiness]:
        return Future()

    def published(self) -> bool:
        return True


@contextmanager
def serve(settings: GatewaySettings | None = None, limits: ConnectionLimits | None = None
          ) -> Iterator[tuple[GatewayServer, Bodies | None]]:
    app = create_app(Backend(), settings or GatewaySettings())
    server = GatewayServer(app, "127.0.0.1:0", limits) if limits else GatewayServer(app, "127.0.0.1:0")
    server.start()
    inner = app
    while not hasattr(inner, "user_middleware"):    # through the Host/Origin guard and the startup gate
        inner = inner.app
    bodies = next((m.kwargs["bodies"] for m in inner.user_middleware if "bodies" in m.kwargs), None)
    try:
        yield server, bodies
    finally:
        server.close()


def connect(port: int, data: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        s.sendall(data)
    return s


def head(length: int, path: bytes = PATH) -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
        path, length)


def response(s: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the one response on `s` (status 0: closed with no answer)."""
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return 0, {}, data
            data += chunk
    except ConnectionResetError:
        return 0, {}, data
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    size = int(headers.get("content-length", "0"))
    while len(rest) < size:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:size]


def closed_within(s: socket.socket, timeout: float) -> bool:
    """Whether the server closes `s` within `timeout` (what it still sends is read and dropped)."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def body_of(size: int, model: str = "nope") -> bytes:
    """A JSON object of exactly `size` bytes naming `model` (unknown here: a 404 once it is all read)."""
    start = json.dumps({"model": model, "pad": ""}).encode()[:-2]
    return start + b"x" * (size - len(start) - 2) + b'"}'




# --- connections -------------------------------------------------------------------------------


def test_half_requests_past_the_fd_limit_do_not_lock_out_a_new_client() -> None:
    """The issue's attack in small: a gateway process with 128 fds, 150 connections holding half a
    request line each. Before, every fd was held and /health was never even accepted; now the cap
    (128 // 4) evicts the oldest half-sent connection for each newcomer."""
    child = subprocess.Popen([sys.executable, "-m", "tests.unit.gateway_child", "--nofile", "128"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        with ExitStack() as held:
            for _ in range(150):
                held.enter_context(connect(port, b"POST /v1/chat/completions HT"))
            t0 = time.monotonic()
            r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5, trust_env=False)
            assert r.status_code == 200 and r.json()["status"] == "ok"
            assert time.monotonic() - t0 < 2
    finally:
        _, err = child.communicate(b"", timeout=20)
    assert b"accept() failed" not in err, "the cap let accept() run out of fds"


def test_a_newcomer_is_refused_at_once_when_every_connection_is_inside_a_request() -> None:
    limits = ConnectionLimits(max_connections=2, header_timeout_s=30)
    with serve(GatewaySettings(body=BodyLimits(idle_s=30)), limits) as (server, _):
        a = connect(server.port, head(100) + b'{"mo')      # heads complete, bodies stalled: in a request
        b = connect(server.port, head(100) + b'{"mo')
        assert until(lambda: sum(c.in_request for c in list(server.connections.open)) == 2)
        with a, b, connect(server.port, b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n") as c:
            status, headers, body = response(c, 5)
            assert status == 503 and headers["retry-after"] == "1" and closed_within(c, 5)
            assert json.loads(body)["error"]["code"] == "connections_full"


def test_a_half_sent_head_is_cut_after_the_header_deadline() -> None:
    with serve(limits=ConnectionLimits(header_timeout_s=0.5)) as (server, _):
        with connect(server.port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n") as s:
            t0 = time.monotonic()
            assert closed_within(s, 5), "a half-sent request head held its connection"
            assert 0.4 <= time.monotonic() - t0 < 3
        with connect(server.port) as s:           # nothing sent at all: the same
            assert closed_within(s, 5)
        # a kept-alive connection is still served, and its next half-sent head cut the same way
        with connect(server.port, b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n") as s:
            s.settimeout(5)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            s.sendall(b"GET /hea")
            assert closed_within(s, 5)


# --- bodies ------------------------------------------------------------------------------------


def test_a_stalled_upload_is_cut_after_the_body_idle_deadline() -> None:
    with serve(GatewaySettings(body=BodyLimits(idle_s=0.5))) as (server, bodies):
        for length in (100, 200 * KiB):           # a small body and a large one (a slot, the budget)
            with connect(server.port, head(length) + b'{"model": "m"') as s:
                t0 = time.monotonic()
                status, headers, body = response(s, 5)
                assert status == 408 and closed_within(s, 5)
                assert json.loads(body)["error"]["code"] == "request_timeout"
                assert time.monotonic() - t0 < 3
        assert bodies is not None and until(lambda: bodies.in_flight_bytes == 0 and bodies.uploads == 0)


def test_uploads_past_the_body_budget_get_503_while_those_within_it_proceed() -> None:
    settings = GatewaySettings(max_body_bytes=1 * MiB, body=BodyLimits(budget_bytes=1 * MiB, small_bytes=1 * KiB))
    with serve(settings) as (server, bodies):
        assert bodies is not None
        with connect(server.port, head(700 * KiB) + b'{"model": "nope", "pad": "'):     # held, 700 KiB reserved
            assert until(lambda: bodies.in_flight_bytes == 700 * KiB)
            with connect(server.port, head(700 * KiB)) as over:          # 1400 KiB would not fit
                status, headers, body = response(over, 5)
                assert status == 503 and headers["retry-after"] == "1"
                assert json.loads(body)["error"]["code"] == "bodies_full"
            with connect(server.port, head(200 * KiB) + body_of(200 * KiB)) as within:   # 900 KiB fits
                status, _, body = response(within, 5)
                assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
            assert until(lambda: bodies.in_flight_bytes == 700 * KiB)     # given back as its request ended
        assert until(lambda: bodies.in_flight_bytes == 0), "the held upload's bytes never came back"


def test_large_uploads_at_once_are_capped_small_bodies_are_not() -> None:
    limits = BodyLimits(max_uploads=2, slot_wait_s=0.3, small_bytes=1 * KiB, idle_s=10)
    with serve(GatewaySettings(body=limits)) as (server, bodies):
        assert bodies is not None
        a = connect(server.port, head(10 * KiB) + b'{"mo')
        b = connect(server.port, head(10 * KiB) + b'{"mo')
        assert until(lambda: bodies.uploads == 2)
        with a, b:
            with connect(server.port, head(10 * KiB) + body_of(10 * KiB)) as third:
                t0 = time.monotonic()
                status, headers, body = response(third, 5)
                assert status == 503 and headers["retry-after"] == "1"
                assert json.loads(body)["error"]["code"] == "uploads_full"
                assert 0.25 <= time.monotonic() - t0 < 3
            with connect(server.port, head(500) + body_of(500)) as small:   # a chat request still goes
                assert response(small, 5)[0] == 404
            with connect(server.port, b"GET /upstream/m/health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n") as nobody:
                assert response(nobody, 5)[0] == 502       # no body, no slot: on to the (absent) model
        assert until(lambda: bodies.uploads == 0)
        with connect(server.port, head(10 * KiB) + body_of(10 * KiB)) as later:
            assert response(later, 5)[0] == 404


# --- JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, code", [
    (b'{"model": "m", "messages": ' + b"[" * 100_000, "too_deeply_nested"),
    (b'{"model": "m", "messages": ' + b"[" * 600 + b"]" * 600 + b"}", "too_deeply_nested"),
    (b"[" * 100_000, "invalid_request"),
])
def test_deep_nesting_is_a_400_in_openai_shape_never_a_500(body: bytes, code: str) -> None:
    with serve() as (server, _):
        with connect(server.port, head(len(body)) + body) as s:
            status, _, answer = response(s, 10)
            assert status == 400, answer
            assert json.loads(answer)["error"]["code"] == code


def test_health_answers_while_four_clients_post_16_mib_json() -> None:
    """Before, json.loads ran on the gateway's loop: four 16 MiB bodies of `[[],[],...]` (~1.7 s of
    parsing each, holding the GIL) kept /health waiting for seconds. Now the model is read by a
    scanner in a worker thread that gives the GIL up every few ms. The bound is generous (0.5 s, the
    measured worst is ~30 ms) because this machine's two cores are shared with other test runs."""
    payload = b'{"model": "nope", "x": [' + b"[]," * (15 * MiB // 3) + b"[]]}"
    with serve() as (server, _):
        statuses: list[int] = []

        def post() -> None:
            with connect(server.port, head(len(payload)) + payload) as s:
                statuses.append(response(s, 60)[0])

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        worst = 0.0
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30, trust_env=False) as http:
            while any(t.is_alive() for t in threads):
                t0 = time.perf_counter()
                assert http.get("/health").status_code == 200
                worst = max(worst, time.perf_counter() - t0)
                time.sleep(0.01)
        for t in threads:
            t.join()
        assert statuses == [404] * 4          # each body was read and its model looked up
        assert worst < 0.5, f"/health took {worst:.2f}s while bodies were parsed"
