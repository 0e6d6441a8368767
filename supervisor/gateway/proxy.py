"""Forwarding one request to a model's llama-server, as a small ASGI response.

- Chunks pass through as they arrive (`aiter_raw`), never buffered, so SSE streams flow.
- A client that disconnects cancels the upstream exchange at once (a task watches
  `http.disconnect`), which closes the upstream connection: llama-server then stops
  generating and frees the slot.
- A request the model never received (connection refused: it crashed, the loop is
  restarting it) waits for the model again and is sent when it is healthy; one that
  failed after it was sent is retried once at most (a request that itself crashes the
  server must not loop), then answered 502. A stream cut after it began gets an SSE
  error event, then its end.
- After such a failure the request waits for the daemon to see what it met, not for a fixed
  pause: until the model's published route is no longer the one that failed (it exited and is
  being restarted: the wait for RUNNING then takes over and sends it the moment the model is
  healthy), or `retry_delay_s` (0.25 s, doubling to 1 s) passes with the route unchanged (a
  model still up: sent again). The loop publishes the routes before it runs its actions, so a
  crashed model's route has left RUNNING while its restart's engine start runs. With a fixed 0.1 s
  pause, a request sent right after a SIGKILL of a Docker model went to the dead container twice (a
  close from the port's proxy at +0.02 s, refused at +0.12 s) before the engine's `die` reached the
  daemon (+0.13 to +0.16 s), 3 times in 3, and a lost send can be repeated once only: a third
  failure would have been a 502 (tests/integration/test_gateway.py,
  test_a_request_right_after_a_sigkill_waits_for_the_restart_not_for_a_fixed_pause).
- A model that answers 503 `Loading model` (llama-server answers every endpoint that way until it has
  loaded) did not run the request: it waits as after a failed send, then is sent again, until its
  deadline; past it the 503 is relayed. The daemon publishes a route RUNNING only after a /health
  200 and takes it out of RUNNING before it restarts a model, so this is a second line: a relayed
  `Loading model` would show a client a restart. To tell, a 503 is read ahead, `LOADING_PEEK` bytes
  at most; any other 503 is relayed whole, as it came.
- Stale keep-alive connections. llama-server (cpp-httplib) closes a connection idle for 5 s
  (`CPPHTTPLIB_KEEPALIVE_TIMEOUT_SECOND`); the pool lets go of its idle ones after
  `KEEPALIVE_EXPIRY_S`, well before. A request that still fails on a *reused* connection before
  any response byte met the server closing it just then (the server closed without reading it):
  it is sent again at once on a new connection, without waiting, without using up the re-send
  above, and counted in `gateway_stale_retry`. Reused is what httpcore's `trace` extension says:
  it reports a connect only for a connection opened for this request.
- Idle connections to a model that is being stopped are closed first. llama-server's exit on SIGTERM
  waits about 0.1 s while a client holds an idle keep-alive connection to it (0.188 s against 0.084 s,
  6 runs each), and a swap stops the old model moments after its last answer. So each model's port has
  a client of its own, and the loop, before a graceful stop, has the gateway close that client when no
  request is in flight on it (`Demand.stopping` -> `Upstream.release_from_thread`). Not keeping idle
  connections at all cost 1 ms a request (GET /health through the gateway, +2.51 ms against +1.47 ms).
- Streams close their connection. llama-server closes the connection after every streamed answer
  although its headers say keep-alive (its chunk provider returns false after `done()`, which
  cpp-httplib takes for a cancelled write), a moment after the last chunk: the pool kept it, and the
  next request on it met the close (68 stale retries in 3,000 requests, issue 21). A request that asks
  to stream (`body.streams`) is sent with `Connection: close`, so the pool never keeps one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import httpx
import structlog

from supervisor import loopback
from supervisor.control.api import MetricsSink
from supervisor.core.demand import Demand
from supervisor.core.routing import Route
from supervisor.gateway import errors
from supervisor.gateway.errors import GatewayError
from supervisor.gateway.keys import KeyFiles

log = structlog.get_logger("supervisor.gateway")

# Failures that mean the request never reached llama-server (safe to send again).
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# Failures after it may have been sent, before any response byte.
_LOST = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ReadTimeout, httpx.WriteTimeout)
# What a reused connection the server closed just as the request went out fails with (no timeouts).
_STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
KEEPALIVE_EXPIRY_S = 2.0   # < llama-server's 5 s idle keep-alive (cpp-httplib), with room for its 10 ms checks
SEEN_POLL_S = 0.005        # after a failure, how often the route is looked at (ProxyResponse._until_seen)
RELEASE_WAIT_S = 0.25      # how long a stop waits for the gateway to close its idle connections to the model
LOADING_PEEK = 4096        # a 503 read ahead for llama-server's `Loading model` (its answer is 75 bytes)
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
               b"proxy-authenticate", b"proxy-authorization"}
# Never relayed: llama-server's CORS answer would let another web origin read through the gateway.
_CORS = b"access-control-"


@dataclass
class Lease:
    """A request counted in flight for `route`'s model (Demand.enter); left exactly once."""

    route: Route
    since: float
    touch: bool = True


@dataclass
class Upstream:
    """A pooled HTTP client per model port (closed before that model stops), and the models' own API keys."""

    transport: httpx.AsyncBaseTransport | None = None     # tests: httpx.MockTransport
    key_files: KeyFiles = field(default_factory=KeyFiles)
    loop: asyncio.AbstractEventLoop | None = None         # the gateway's, set by its lifespan
    _clients: dict[int, httpx.AsyncClient] = field(default_factory=dict)
    _fresh: httpx.AsyncClient | None = None

    def client(self, port: int = 0) -> httpx.AsyncClient:
        """The kept-alive client for the model on `port` (the route's published port)."""
        c = self._clients.get(port)
        if c is None:
            c = self._clients[port] = httpx.AsyncClient(
                timeout=_TIMEOUT,
                limits=httpx.Limits(max_connections=1024, max_keepalive_connections=64,
                                    keepalive_expiry=KEEPALIVE_EXPIRY_S),
                follow_redirects=False, transport=self.transport, verify=loopback.tls_context(),
            )
        return c

    async def release(self, port: int) -> None:
        """Close the client of the model on `port`, and with it its idle connections (nothing is in flight on
        it: the caller checked); the next request to that port opens a new one."""
        c = self._clients.pop(port, None)
        if c is not None:
            await c.aclose()

    def release_from_thread(self, port: int) -> None:
        """From the loop's thread, before a graceful stop: run `release` on the gateway's loop and wait for it,
        RELEASE_WAIT_S at most (a busy gateway only makes the stop that much slower)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.release(port), loop).result(RELEASE_WAIT_S)
        except (concurrent.futures.TimeoutError, RuntimeError) as e:
            log.debug("idle connections not closed before the stop", port=port, error=type(e).__name__)

    def fresh(self) -> httpx.AsyncClient:
        """A client that keeps no connection: each request it sends opens a new one (stale retries)."""
        if self._fresh is None:
            self._fresh = httpx.AsyncClient(
                timeout=_TIMEOUT, limits=httpx.Limits(max_connections=256, max_keepalive_connections=0),
                follow_redirects=False, transport=self.transport, verify=loopback.tls_context(),
            )
        return self._fresh

    def key(self, path: str | None) -> str | None:
        """The one key sent upstream: the first of the model's api_key_file, re-read when it changes."""
        return self.key_files.first(path)

    async def aclose(self) -> None:
        for c in (*self._clients.values(), self._fresh):
            if c is not None:
                await c.aclose()
        self._clients.clear()
        self._fresh = None


_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=60.0, pool=None)


class ConnectionTrace:
    """httpcore's `trace` extension for one send: was its connection opened for it, or reused?"""

    def __init__(self) -> None:
        self.events = 0
        self.connected = False

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        self.events += 1
        if event.startswith("connection.connect_"):     # connect_tcp, connect_unix_socket
            self.connected = True

    @property
    def reused(self) -> bool:
        """True only when the transport traced the send (httpcore) and it opened no connection."""
        return self.events > 0 and not self.connected


class _Backend(Protocol):
    @property
    def demand(self) -> Demand: ...

    def routes(self) -> Mapping[str, Route]: ...


class _Settings(Protocol):
    @property
    def retry_delay_s(self) -> float: ...


class Host(Protocol):
    """What a ProxyResponse needs of the gateway (app.Gateway is one): so only app imports proxy."""

    @property
    def backend(self) -> _Backend: ...

    @property
    def settings(self) -> _Settings: ...

    @property
    def metrics(self) -> MetricsSink: ...

    @property
    def upstream(self) -> Upstream: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    async def acquire(self, model: str, *, deadline: float) -> Lease: ...


class ProxyResponse:
    def __init__(self, *, gateway: Host, lease: Lease, method: str, path: str, query: str, body: bytes,
                 headers: dict[str, str], deadline: float, retries: int = 1, streams: bool = False) -> None:
        self.gw = gateway
        self.lease: Lease | None = lease
        self.model = lease.route.name
        self.method, self.path, self.query, self.body = method, path, query, body
        self.headers = headers
        self.deadline = deadline
        self.retries = retries
        self.closes = streams         # llama-server closes a stream's connection: keep none
        self.status = 0
        self.finished = False         # the last byte is on its way: a disconnect now is the normal end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with anyio.create_task_group() as tg:
                async def disconnected() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    if not self.finished:
                        log.info("client disconnected: upstream request cancelled", model=self.model)
                    tg.cancel_scope.cancel()

                tg.start_soon(disconnected)
                await self._exchange(send)
                tg.cancel_scope.cancel()
        finally:
            self._leave()
            self.gw.metrics.gateway_request(self.model, self.status or 499)

    def _leave(self) -> None:
        if self.lease is not None:
            self.gw.backend.demand.leave(self.model, touch=self.lease.touch, port=self.lease.route.port)
            self.lease = None

    async def _exchange(self, send: Any) -> None:
        delay, lost, fresh = self.gw.settings.retry_delay_s, 0, False
        while True:
            assert self.lease is not None
            route = self.lease.route
            client = self.gw.upstream.fresh() if fresh else self.gw.upstream.client(route.port or 0)
            trace = ConnectionTrace()
            headers = dict(self.headers)
            key = self.gw.upstream.key(route.api_key_file)
            if key:
                headers["authorization"] = f"Bearer {key}"
            if self.closes:
                headers["connection"] = "close"
            url = f"{route.url}{self.path}" + (f"?{self.query}" if self.query else "")
            try:
                response = await client.send(client.build_request(self.method, url, headers=headers,
                                                                  content=self.body,
                                                                  extensions={"trace": trace}), stream=True)
            except (httpx.HTTPError, ValueError) as e:
                if isinstance(e, _STALE) and trace.reused and not fresh:
                    # the server closed this kept-alive connection as the request went out: not a lost request
                    log.debug("stale keep-alive connection: sent again on a new one", model=self.model,
                              error=type(e).__name__)
                    self.gw.metrics.gateway_stale_retry(self.model)
                    fresh = True
                    continue
                fresh = False
                # Anything else (a key that is not a valid header value: h11's LocalProtocolError, or
                # UnicodeEncodeError) is answered 502 at once, never a traceback: its message may quote
                # the header's value, so only the class name is logged.
                self._leave()
                if not isinstance(e, (*_NOT_SENT, *_LOST)):
                    log.warning("request to the model failed", model=self.model, error=type(e).__name__)
                    await self._error(send, errors.send_failed(self.model, type(e).__name__))
                    return
                lost += not isinstance(e, _NOT_SENT)
                if lost > self.retries or self.gw.clock() >= self.deadline:
                    await self._error(send, errors.upstream_failed(self.model, type(e).__name__))
                    return
                log.info("model unreachable: waiting for it, then sending again", model=self.model,
                         error=type(e).__name__, retry_in_s=delay)
                if not await self._again(route, delay, send):
                    return
                delay = min(delay * 2, 1.0)
                continue
            raw = response.aiter_raw()
            try:
                head = b""
                if response.status_code == 503 and self.gw.clock() < self.deadline:
                    try:
                        head = await _peek(raw, LOADING_PEEK)
                    except _LOST as e:
                        self._leave()
                        await self._error(send, errors.upstream_failed(self.model, type(e).__name__))
                        return
                    if _loading(head):
                        self._leave()
                        log.info("model still loading: waiting for it, then sending again", model=self.model,
                                 retry_in_s=delay)
                        if not await self._again(route, delay, send):
                            return
                        delay = min(delay * 2, 1.0)
                        continue
                await self._relay(response, raw, head, send)
            finally:
                await response.aclose()
            return

    async def _again(self, failed: Route, wait_s: float, send: Any) -> bool:
        """After a send the model did not run: wait for the daemon to see it (`_until_seen`), then for the
        model again. False: that wait ended in an error, already answered."""
        await self._until_seen(failed, wait_s)
        try:
            self.lease = await self.gw.acquire(self.model, deadline=self.deadline)
        except GatewayError as ge:
            await self._error(send, ge)
            return False
        return True

    async def _until_seen(self, failed: Route, wait_s: float) -> None:
        """Wait until the daemon has seen what the request met (the model's published route is no longer
        `failed`: it left RUNNING), at most `wait_s`. The routes are an in-memory snapshot: a look costs
        microseconds, so every SEEN_POLL_S."""
        end = min(self.gw.clock() + wait_s, self.deadline)
        while self.gw.backend.routes().get(self.model) == failed:
            left = end - self.gw.clock()
            if left <= 0:
                return
            await anyio.sleep(min(SEEN_POLL_S, left))

    async def _relay(self, response: httpx.Response, raw: AsyncIterator[bytes], head: bytes, send: Any) -> None:
        """The response: its status and headers, `head` (the body's start, read ahead), then the rest of `raw`."""
        self.status = response.status_code
        headers = [(k, v) for k, v in response.headers.raw
                   if k.lower() not in _HOP_BY_HOP and not k.lower().startswith(_CORS)]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        sse = response.headers.get("content-type", "").startswith("text/event-stream")
        sent = 0
        if head:
            await send({"type": "http.response.body", "body": head, "more_body": True})
            sent += len(head)
        try:
            async for chunk in raw:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
        except _LOST as e:
            log.warning("model failed mid-response", model=self.model, error=type(e).__name__, bytes_sent=sent,
                        streaming=sse)
            if not sse:
                raise               # the client sees a cut connection: the body cannot be mended
            event = errors.upstream_failed(self.model, "the stream was cut").sse_event()
            await send({"type": "http.response.body", "body": event + b"data: [DONE]\n\n", "more_body": True})
        finally:
            self.gw.metrics.gateway_bytes(self.model, sent)
        self.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _error(self, send: Any, err: GatewayError) -> None:
        self.status = err.status
        headers = [(b"content-type", b"application/json"), *((k.lower().encode(), v.encode())
                                                              for k, v in err.headers.items())]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        self.finished = True
        await send({"type": "http.response.body", "body": err.body(), "more_body": False})


async def _peek(raw: AsyncIterator[bytes], limit: int) -> bytes:
    """The body's first chunks, `limit` bytes or a little more (whole chunks), or all of it if shorter."""
    head = b""
    async for chunk in raw:
        head += chunk
        if len(head) >= limit:
            break
    return head


def _loading(head: bytes) -> bool:
    """Whether a 503's body is llama-server's answer before it has loaded (server-http.cpp):
    {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}."""
    if len(head) > LOADING_PEEK:
        return False
    try:
        err = json.loads(head).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(err, dict) and err.get("message") == "Loading model" and err.get("type") == "unavailable_error"
