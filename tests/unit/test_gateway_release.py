"""Before a graceful stop the gateway closes its idle connections to that model (proxy.Upstream.release).

llama-server's exit on SIGTERM waits about 0.1 s while a client holds an idle keep-alive connection to it
(0.188 s against 0.084 s); the gateway kept one after every answer. Here a keep-alive server stands in for
llama-server, the gateway's loop runs on a thread of its own as in the daemon, and the loop's side calls
Demand.stopping as the executor does before runtime.stop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from supervisor.core.demand import Demand
from supervisor.gateway.proxy import Upstream

from .helpers import until

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class KeepAlive:
    """Answers every request on a connection and keeps it open; counts the connections the client closed."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed_by_client = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        finally:
            writer.close()


class Gateway:
    """An asyncio loop on its own thread, with an Upstream and a keep-alive server on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = KeepAlive()
        self.upstream = Upstream(loop=self.loop)
        srv = self.run(asyncio.start_server(self.server.serve, "127.0.0.1", 0))
        self.srv = srv
        self.port = int(srv.sockets[0].getsockname()[1])

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)  # type: ignore[arg-type]

    def get(self) -> int:
        async def go() -> int:
            r = await self.upstream.client(self.port).get(f"http://127.0.0.1:{self.port}/health")
            return r.status_code
        return int(self.run(go()))  # type: ignore[call-overload]

    def close(self) -> None:
        async def down() -> None:
            await self.upstream.aclose()
            self.srv.close()            # type: ignore[attr-defined]
        self.run(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def gw() -> Iterator[Gateway]:
    g = Gateway()
    yield g
    g.close()


def test_a_stop_closes_the_idle_connection_first(gw: Gateway) -> None:
    demand = Demand(time.monotonic)
    demand.on_stopping(gw.upstream.release_from_thread)
    assert gw.get() == 200 and gw.get() == 200
    assert gw.server.opened == 1 and gw.server.closed_by_client == 0     # one kept-alive connection, idle

    demand.stopping("m", gw.port)             # the loop's thread, before runtime.stop

    assert until(lambda: gw.server.closed_by_client == 1)
    assert gw.get() == 200 and gw.server.opened == 2                       # the next request opens a new one


def test_a_stop_with_a_request_in_flight_there_leaves_its_connection(gw: Gateway) -> None:
    demand = Demand(time.monotonic)
    demand.on_stopping(gw.upstream.release_from_thread)
    assert gw.get() == 200
    assert demand.enter("m", port=gw.port)

    demand.stopping("m", gw.port)

    assert not until(lambda: gw.server.closed_by_client > 0, timeout=0.3)
    demand.leave("m", port=gw.port)
    demand.stopping("m", gw.port)
    assert until(lambda: gw.server.closed_by_client == 1)


def test_no_gateway_loop_no_wait() -> None:
    upstream = Upstream()                     # --no-gateway, or the gateway not started yet
    t0 = time.monotonic()
    upstream.release_from_thread(8081)
    assert time.monotonic() - t0 < 0.1
