"""A full queue answers 429 with Retry-After (issue 22's survivor at gateway/errors.py), checked on the
error itself and through the app, where the ordering comes from an event, not from a timeout."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import Future

import httpx

from supervisor.core.commands import Readiness
from supervisor.core.lifecycle import State
from supervisor.core.routing import Route, route_table
from supervisor.core.demand import Demand
from supervisor.gateway import errors
from supervisor.gateway.app import GatewaySettings, create_app
from supervisor.gateway.proxy import Upstream

# A start timeout no test waits for: the waiting request is answered by hand.
SLOW = Route("m", State.STOPPED, "127.0.0.1", None, on_demand=True, start_timeout_s=600, max_queue=1)


def test_queue_full_is_a_429_rate_limit_error_with_retry_after() -> None:
    e = errors.queue_full("m", 4, retry_after_s=7)
    r = e.response()
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert (e.type, e.code) == ("rate_limit_error", "queue_full") and "retry after 7s" in e.message


class HeldBackend:
    """ensure() hands out futures the test answers; `asked` is set once the first request waits."""

    def __init__(self, route: Route) -> None:
        self.demand = Demand(time.monotonic)
        self.table = route_table((route,))
        self.futures: list[Future[Readiness]] = []
        self.asked = asyncio.Event()

    def routes(self) -> dict[str, Route]:
        return self.table

    def ensure(self, model: str) -> Future[Readiness]:
        fut: Future[Readiness] = Future()
        self.futures.append(fut)
        self.asked.set()                     # called on the event loop's thread
        return fut

    def published(self) -> bool:
        return True


def test_a_request_past_the_models_max_queue_gets_429_with_retry_after_while_the_first_waits() -> None:
    b = HeldBackend(SLOW)
    app = create_app(b, GatewaySettings(wait_grace_s=0), upstream=Upstream(transport=httpx.MockTransport(
        lambda r: httpx.Response(500))))

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080") as c:
            first = asyncio.create_task(c.post("/v1/completions", json={"model": "m"}))
            await asyncio.wait_for(b.asked.wait(), 10)          # the first one is in the queue now
            assert b.demand.usage("m").waiting == 1
            second = await c.post("/v1/completions", json={"model": "m"})
            b.futures[0].set_result(Readiness("stopped", "stopped by the operator"))
            return await asyncio.wait_for(first, 10), second

    first, second = asyncio.run(scenario())
    assert second.status_code == 429 and second.json()["error"]["code"] == "queue_full"
    assert second.headers["retry-after"] == "150", "a quarter of the model's start timeout"
    assert first.status_code == 503 and first.json()["error"]["message"] == "stopped by the operator"
    assert len(b.futures) == 1, "the refused request never asked the loop"
    assert b.demand.usage("m").waiting == 0


def test_every_gateway_error_in_openais_shape_exactly() -> None:
    """Status, type, code, message and headers of each error the gateway answers itself (the clients
    branch on type and code; operators read the message): killed the message and header mutants."""
    table = [
        (errors.not_found("x", ["a", "b"]), 404, "invalid_request_error", "model_not_found",
         "model 'x' does not exist; the models here are: a, b", {}),
        (errors.not_found("x", []), 404, "invalid_request_error", "model_not_found",
         "model 'x' does not exist; the models here are: none", {}),
        (errors.bad_request("no model"), 400, "invalid_request_error", "invalid_request", "no model", {}),
        (errors.too_large(100), 413, "invalid_request_error", "request_too_large",
         "request body over 100 bytes (fix: send less, or raise --gateway-max-body)", {}),
        (errors.unauthorized(), 401, "invalid_request_error", "invalid_api_key",
         "missing or wrong API key (send 'Authorization: Bearer <key>')", {"www-authenticate": "Bearer"}),
        (errors.queue_full("m", 2, 5), 429, "rate_limit_error", "queue_full",
         "model 'm' already has 2 requests waiting for it to be ready (its max_queue); retry after 5s",
         {"retry-after": "5"}),
        (errors.unavailable("down", "model_not_running"), 503, "server_error", "model_not_running", "down", {}),
        (errors.start_timeout("m", 61.6), 504, "server_error", "start_timeout", "model 'm' was not ready after 62s", {}),
        (errors.upstream_failed("m", "reset"), 502, "server_error", "upstream_error",
         "model 'm' failed during the request (reset); it is being restarted", {}),
    ]
    for e, status, type_, code, message, headers in table:
        r = e.response()
        assert (r.status_code, r.media_type) == (status, "application/json")
        assert json.loads(r.body) == {"error": {"message": message, "type": type_, "code": code}}
        assert {k: v for k, v in r.headers.items() if k not in ("content-length", "content-type")} == headers
        assert e.sse_event() == b"data: " + r.body + b"\n\n" and str(e) == message
