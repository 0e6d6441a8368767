"""The gateway's ASGI app: routing by `model`, waiting for a model to be ready, forwarding.

Starlette for routing and requests; the forwarding itself is a small ASGI response
(`supervisor.gateway.proxy`) so that a client's disconnect cancels the upstream request
at once, and chunks pass through as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route as HttpRoute

from supervisor.control.api import MetricsSink, NullMetrics
from supervisor.core.activity import Activity
from supervisor.core.commands import Readiness
from supervisor.core.demand import Demand
from supervisor.core.lifecycle import State
from supervisor.core.routing import Route
from supervisor.gateway import endpoints, errors
from supervisor.gateway.activity import SCOPE_KEY, RecordActivity
from supervisor.gateway.body import Bodies, BodyLimits, ReleaseBodies
from supervisor.gateway.errors import GatewayError
from supervisor.gateway.guard import LOOPBACK_NAMES, Guard
from supervisor.gateway.keys import Authority, bearer
from supervisor.gateway.proxy import Lease, ProxyResponse, Upstream
from supervisor.gateway.startup import StartupGate

log = structlog.get_logger("supervisor.gateway")

PROXY_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


class Backend(Protocol):
    """What the gateway needs from the daemon (DaemonController implements it)."""

    demand: Demand

    def routes(self) -> Mapping[str, Route]: ...

    def ensure(self, model: str) -> Future[Readiness]: ...

    def published(self) -> bool:
        """Has the loop published its first routes (the manifests read and applied)?"""
        ...


@dataclass(frozen=True)
class GatewaySettings:
    max_body_bytes: int = 16 * 1024 * 1024
    api_keys: frozenset[str] = field(default=frozenset(), repr=False)   # never logged
    wait_grace_s: float = 30.0          # beyond the model's start timeout: time to make room for it
    retry_delay_s: float = 0.25         # after a failed send, the longest first wait for the daemon to see it
    allowed_hosts: frozenset[str] = LOOPBACK_NAMES   # Host names answered (guard.allowed_hosts)
    startup_hold_s: float = 60.0        # longest a request waits for the loop's first routes
    body: BodyLimits = BodyLimits()     # deadlines, upload slots and the byte budget of bodies in flight


class Gateway:
    """The handlers, over a Backend; `app` is the ASGI application."""

    def __init__(self, backend: Backend, settings: GatewaySettings = GatewaySettings(),
                 metrics: MetricsSink | None = None, clock: Callable[[], float] = time.monotonic,
                 upstream: Upstream | None = None, activity: Activity | None = None,
                 mounts: Sequence[BaseRoute] = ()) -> None:
        self.backend = backend
        self.activity = activity or Activity()     # the console's Activity page reads it
        self.settings = settings
        self.metrics = metrics or NullMetrics()
        self.clock = clock
        self.upstream = upstream or Upstream()
        self.authority = Authority(settings.api_keys, self.upstream.key_files)
        self.bodies = Bodies(settings.max_body_bytes, settings.body)
        self.app = Starlette(
            routes=[
                HttpRoute("/health", self.health, methods=["GET"]),
                HttpRoute("/v1/models", self.list_models, methods=["GET"]),
                HttpRoute("/v1/models/{model:path}", self.get_model, methods=["GET"]),
                HttpRoute("/v1/{path:path}", self.openai, methods=["POST"]),
                HttpRoute("/upstream/{model}/{path:path}", self.raw, methods=PROXY_METHODS),
                *mounts,            # the console (/ui), built by the daemon's wiring: the gateway does not import it
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # before a graceful stop the loop has the upstream close its idle connections to that model (proxy.py)
        self.upstream.loop = asyncio.get_running_loop()
        self.backend.demand.on_stopping(self.upstream.release_from_thread)
        yield
        self.upstream.loop = None
        await self.upstream.aclose()
        self.bodies.close()

    # --- handlers ------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        routes = _unique(self.backend.routes())
        states: dict[str, int] = {}
        for r in routes:
            states[r.state.value] = states.get(r.state.value, 0) + 1
        return JSONResponse({"status": "ok", "models": len(routes), "states": states})

    async def list_models(self, request: Request) -> Response:
        self._authorize(request)
        data = []
        for r in _unique(self.backend.routes()):
            entry = {"id": r.name, "object": "model", "created": 0, "owned_by": "llama-supervisor",
                     "state": r.state.value, "lifecycle": "on-demand" if r.on_demand else "always",
                     "aliases": list(r.aliases)}
            data.append(entry)
            data += [{**entry, "id": alias, "alias_of": r.name} for alias in r.aliases]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        self._authorize(request)
        name = request.path_params["model"]
        r = self.backend.routes().get(name)
        if r is None:
            raise self._not_found(name)
        return JSONResponse({"id": name, "object": "model", "created": 0, "owned_by": "llama-supervisor",
                             "state": r.state.value, "alias_of": r.name if name != r.name else None})

    async def openai(self, request: Request) -> ProxyResponse:
        """A /v1/* inference POST with a JSON `model`: routed to that model, started if it is on-demand."""
        if (refused := endpoints.check_inference("/v1/" + request.path_params["path"])) is not None:
            raise refused
        self._authorize(request)
        body = await self._body(request)
        name, streams = await self.bodies.model(body)    # off the loop, nesting bounded: 400 unless a JSON object
        route = self.backend.routes().get(name)
        if route is None:
            raise self._not_found(name)
        self._authorize_model(request, route)
        model = route.name
        path = "/v1/" + request.path_params["path"]
        t0 = self.clock()
        deadline = t0 + route.start_timeout_s + self.settings.wait_grace_s
        self.activity.update(request.scope.get(SCOPE_KEY), model=model)
        try:
            lease = await self.acquire(model, deadline=deadline)
        except GatewayError as e:
            self.metrics.gateway_request(model, e.status)
            raise
        self.activity.update(request.scope.get(SCOPE_KEY), queue_wait_s=self.clock() - t0)
        return ProxyResponse(
            gateway=self, lease=lease, method="POST", path=path, query=request.url.query, body=body,
            headers=_forward_headers(request.headers), deadline=deadline, streams=streams,
        )

    async def raw(self, request: Request) -> ProxyResponse:
        """/upstream/<model>/<path>: a model's own endpoints (/health, /slots, /metrics, web UI), only
        while it runs; it starts nothing and does not count as use. Only the endpoints.UPSTREAM ones."""
        if (refused := endpoints.check_upstream(request.method, "/" + request.path_params["path"])) is not None:
            raise refused
        self._authorize(request)
        name = request.path_params["model"]
        route = self.backend.routes().get(name)
        if route is None:
            raise self._not_found(name)
        self._authorize_model(request, route)
        body = await self._body(request)
        running = route.state is State.RUNNING and route.url is not None
        if not running or not self.backend.demand.enter(route.name, touch=False, port=route.port):
            raise errors.unavailable(f"model '{route.name}' is {route.state.value}, not running"
                                     " (/upstream/ does not start models: send a /v1/ request)", "model_not_running")
        return ProxyResponse(
            gateway=self, lease=Lease(route, self.clock(), touch=False), method=request.method,
            path="/" + request.path_params["path"], query=request.url.query, body=body,
            headers=_forward_headers(request.headers), deadline=self.clock(), retries=0,
            streams=await self.bodies.streams(body),
        )

    # --- waiting for a model -----------------------------------------------------------------

    async def acquire(self, model: str, *, deadline: float) -> Lease:
        """Enter the model's in-flight count once it is RUNNING; wait for it (bounded queue) otherwise."""
        demand = self.backend.demand
        route = self.backend.routes().get(model)
        if (route is not None and route.state is State.RUNNING and route.url is not None
                and demand.enter(model, port=route.port)):
            return Lease(route, self.clock())
        limit = route.max_queue if route is not None else 1
        if not demand.wait_begin(model, limit):
            raise errors.queue_full(model, limit, retry_after_s=max(1, int(route.start_timeout_s // 4) if route else 1))
        t0 = self.clock()
        self.metrics.gateway_queue(model, demand.usage(model).waiting)
        try:
            while True:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise errors.start_timeout(model, self.clock() - t0)
                future = self.backend.ensure(model)
                try:
                    ready = await asyncio.wait_for(asyncio.wrap_future(future), timeout=remaining)
                except BaseException as e:
                    # Timed out, or the client left: withdraw the request. The loop marks a request's future
                    # running only as it answers it, so cancel() takes it out of the queue (nothing starts or
                    # is evicted for it); when the answer is already on its way, hand back its admission.
                    if not future.cancel():
                        future.add_done_callback(lambda f: _release(demand, model, f))
                    if isinstance(e, asyncio.TimeoutError):
                        raise errors.start_timeout(model, self.clock() - t0) from None
                    raise
                if not ready.ok or ready.route is None:
                    raise _refusal(ready)
                if demand.enter(model, admitted=True, port=ready.route.port):   # before wait_end: never idle between
                    self.metrics.gateway_wait(model, self.clock() - t0)
                    return Lease(ready.route, self.clock())
                # draining again (another model needs the room): ask once more
        finally:
            demand.wait_end(model)
            self.metrics.gateway_queue(model, demand.usage(model).waiting)

    # --- helpers -------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        """May the caller use the gateway at all (keys.Authority.admits)?"""
        if not self.authority.admits(bearer(request.headers.get("authorization", "")), self.backend.routes()):
            raise errors.unauthorized()

    def _authorize_model(self, request: Request, route: Route) -> None:
        """May the caller use this model (its own key, or a gateway key)?"""
        if self.authority.may_use(bearer(request.headers.get("authorization", "")), route):
            return
        if route.api_key_file is not None:
            raise errors.model_key_required(route.name, gateway_keys=bool(self.settings.api_keys))
        raise errors.unauthorized()

    async def _body(self, request: Request) -> bytes:
        """Deadlines, upload slots, the byte budget: supervisor.gateway.body."""
        return await self.bodies.read(request)

    def _not_found(self, name: str) -> GatewayError:
        routes = self.backend.routes()
        return errors.not_found(name, sorted({r.name for r in routes.values()}))


def _release(demand: Demand, model: str, future: Future[Readiness]) -> None:
    """A request that gave up after the loop let it in: its admission goes back (else the model could
    never be drained)."""
    if not future.cancelled() and future.exception() is None and future.result().ok:
        demand.release(model)


def _refusal(ready: Readiness) -> GatewayError:
    match ready.code:
        case "unknown":
            return errors.GatewayError(404, ready.message, type="invalid_request_error", code="model_not_found")
        case "too_big":
            return errors.unavailable(ready.message, "insufficient_memory")
        case "fatal":
            return errors.unavailable(ready.message, "model_fatal")
        case "stopped":
            return errors.unavailable(ready.message, "model_stopped")
        case "shutting_down" | "ok":
            return errors.unavailable(ready.message or "the daemon is shutting down", "shutting_down")


def _unique(routes: Mapping[str, Route]) -> list[Route]:
    return sorted({r.name: r for r in routes.values()}.values(), key=lambda r: r.name)


# Request headers the upstream gets: content negotiation only. The client's Authorization is the
# gateway's key, never the model's: the gateway adds the model's own key itself.
_PASS = ("content-type", "accept", "accept-encoding", "user-agent")


def _forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k in _PASS if (v := headers.get(k)) is not None}


async def error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return exc.response()


def create_app(backend: Backend, settings: GatewaySettings = GatewaySettings(),
               metrics: MetricsSink | None = None, upstream: Upstream | None = None,
               activity: Activity | None = None, mounts: Sequence[BaseRoute] = ()) -> Any:
    gw = Gateway(backend, settings, metrics, upstream=upstream, activity=activity, mounts=mounts)
    gw.app.add_exception_handler(GatewayError, error_handler)
    gw.app.add_middleware(ReleaseBodies, bodies=gw.bodies)     # a request's body budget back at its end
    gw.app.add_middleware(RecordActivity, activity=gw.activity)  # the console's Activity page
    # outermost first: refuse foreign Hosts, other origins and non-JSON bodies before anything
    # else (a starting gateway included), then hold requests until the first routes are out
    return Guard(StartupGate(gw.app, backend.published, hold_s=settings.startup_hold_s), settings.allowed_hosts)
