"""A kept-alive upstream connection that llama-server closes just as the gateway reuses it.

The race, reproduced deterministically with a real socket server (the gateway's real httpx
pool, no MockTransport: whether a connection was reused is what httpcore's trace says): the
server answers a connection's first request with keep-alive, then closes the connection when
the next request arrives on it, without answering, as cpp-httplib does when its 5 s idle
timer runs out in the same 10 ms tick the request comes in. Such a request was never read:
it is sent again at once on a new connection and is not one of the re-sends kept for a model
that failed mid-request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future

import httpx

from supervisor.control.api import NullMetrics
from supervisor.core.commands import Readiness
from supervisor.core.lifecycle import State
from supervisor.core.routing import Route, route_table
from supervisor.core.demand import Demand
from supervisor.gateway.app import GatewaySettings, create_app
from supervisor.gateway.proxy import Upstream

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 8\r\n\r\n{\"ok\":1}"


class Stale:
    """Per connection: the first request answered (kept alive), the second closed unanswered.
    `fail_fresh`: so many first requests of new connections are also closed unanswered (a model
    that fails mid-request), before the server answers them again."""

    def __init__(self, fail_fresh: int = 0) -> None:
        self.connections = 0
        self.fail_fresh = fail_fresh
        self.closed_stale = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for n in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if n == 1:
                    self.closed_stale += 1
                    return              # idle timer ran out as this request came in: closed unread
                if self.fail_fresh:
                    self.fail_fresh -= 1
                    return              # the model failed with the request in hand
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class Backend:
    def __init__(self, port: int) -> None:
        self.demand = Demand(time.monotonic)
        self.table = route_table((Route("m", State.RUNNING, "127.0.0.1", port, start_timeout_s=1.0),))

    def published(self) -> bool:
        return True

    def routes(self) -> dict[str, Route]:
        return self.table

    def ensure(self, model: str) -> Future[Readiness]:
        fut: Future[Readiness] = Future()
        fut.set_result(Readiness("ok", route=self.table["m"]))
        return fut


class Counts(NullMetrics):
    def __init__(self) -> None:
        self.stale = 0
        self.codes: list[int] = []

    def gateway_stale_retry(self, model: str) -> None:
        self.stale += 1

    def gateway_request(self, model: str, code: int) -> None:
        self.codes.append(code)


async def _run(server: Stale, send: Callable[[httpx.AsyncClient], object], times: int) -> tuple[list[int], Counts]:
    srv = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    metrics = Counts()
    upstream = Upstream()
    app = create_app(Backend(port), GatewaySettings(retry_delay_s=0.01), metrics=metrics, upstream=upstream)
    codes = []
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080") as c:
            for _ in range(times):
                r = await send(c)  # type: ignore[misc]
                codes.append(r.status_code)
    finally:
        await upstream.aclose()
        srv.close()
        await srv.wait_closed()
    return codes, metrics


def _completion(c: httpx.AsyncClient) -> object:
    return c.post("/v1/completions", content=b'{"model": "m", "max_tokens": 1}',
                  headers={"content-type": "application/json"})


def test_a_request_on_a_connection_closed_as_it_was_reused_is_sent_again_on_a_new_one() -> None:
    server = Stale()
    codes, metrics = asyncio.run(_run(server, _completion, 3))
    assert codes == [200, 200, 200]
    # 1st: new connection A. 2nd: reuses A, closed unread -> sent on new B (no keep-alive: closed
    # after). 3rd: A and B are gone from the pool: new connection C.
    assert server.closed_stale == 1 and server.connections == 3
    assert metrics.stale == 1


def test_a_stale_retry_does_not_use_up_the_re_send_kept_for_a_failed_model() -> None:
    # The 2nd request meets the stale close, then its new connection fails too (the model took the
    # request and died): that is the one counted re-send, and the third try answers.
    server = Stale(fail_fresh=0)
    async def two(c: httpx.AsyncClient) -> httpx.Response:
        r = await _completion(c)  # type: ignore[misc]
        server.fail_fresh = 1     # from now on the next new connection fails once
        return r  # type: ignore[no-any-return]
    codes, metrics = asyncio.run(_run(server, two, 2))
    assert codes == [200, 200], "the stale close must not count as the one re-send"
    assert metrics.stale == 1


def test_the_upstream_path_with_no_re_sends_still_survives_a_stale_connection() -> None:
    server = Stale()
    codes, metrics = asyncio.run(_run(server, lambda c: c.get("/upstream/m/health"), 2))
    assert codes == [200, 200]
    assert metrics.stale == 1


def test_a_failure_on_a_new_connection_is_not_taken_for_a_stale_one() -> None:
    # every new connection fails with the request in hand: the gateway re-sends once, then 502,
    # and calls none of it stale
    server = Stale(fail_fresh=10)
    codes, metrics = asyncio.run(_run(server, _completion, 1))
    assert codes == [502]
    assert metrics.stale == 0 and server.connections == 2


class ClosesAfterStreams:
    """llama-server's way with streams: a streamed answer says keep-alive, then the server closes the
    connection after its last chunk. Here the close waits for the next request on that connection
    (the race at its worst: the pool reused it before the close arrived) and leaves it unanswered.
    Records each request's Connection header."""

    STREAM = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
              b"keep-alive: timeout=5, max=100\r\n\r\n"
              b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")

    def __init__(self) -> None:
        self.connection_headers: list[str] = []
        self.unanswered = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            streamed = False
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if streamed:
                    self.unanswered += 1
                    return          # the close after the stream: this request is never read
                lines = head.split(b"\r\n")
                length = next((int(ln.split(b":")[1]) for ln in lines if ln.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.connection_headers.append(next((ln.split(b":", 1)[1].strip().decode() for ln in lines
                                                     if ln.lower().startswith(b"connection:")), ""))
                streamed = b'"stream": true' in body
                writer.write(self.STREAM if streamed else OK)
                await writer.drain()
                if streamed and self.connection_headers[-1] == "close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_a_streamed_request_is_sent_with_connection_close_so_no_one_reuses_what_llama_server_closes() -> None:
    server = ClosesAfterStreams()

    async def stream_then_plain(c: httpx.AsyncClient) -> httpx.Response:
        r = await c.post("/v1/chat/completions", content=b'{"model": "m", "stream": true}',
                         headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")
        return await _completion(c)  # type: ignore[misc,no-any-return]

    codes, metrics = asyncio.run(_run(server, stream_then_plain, 3))
    assert codes == [200, 200, 200]
    assert server.unanswered == 0 and metrics.stale == 0, "a connection a stream ended was reused"
    assert server.connection_headers[0::2] == ["close"] * 3       # the streams
    assert "close" not in server.connection_headers[1::2]         # the plain ones stay kept-alive


def test_only_a_stream_true_member_counts_as_asking_to_stream() -> None:
    from supervisor.gateway.body import streams
    assert streams(b'{"model": "m", "stream": true}') and streams(b'{"stream"\n:\ttrue, "model": "m"}')
    assert not streams(b'{"model": "m", "stream": false}') and not streams(b'{"model": "m"}')
    assert not streams(b'{"model": "m", "prompt": "\\"stream\\": true"}')   # inside a string: escaped quotes
