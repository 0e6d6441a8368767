"""The gateway's ASGI app over a hand-written backend and an httpx.MockTransport upstream: errors in
OpenAI's shape, keys, limits, the queue, the wait, re-sending what the model never got, a cut stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from pathlib import Path

import httpx
import pytest

from supervisor.core.commands import Readiness
from supervisor.core.lifecycle import State
from supervisor.core.routing import Route, route_table
from supervisor.core.demand import Demand
from supervisor.gateway.app import GatewaySettings, create_app
from supervisor.gateway.proxy import Upstream

RUNNING = Route("m", State.RUNNING, "127.0.0.1", 9001, aliases=("m-alias",), start_timeout_s=0.2)
STOPPED = Route("m", State.STOPPED, "127.0.0.1", None, on_demand=True, start_timeout_s=0.2, max_queue=1)


class FakeBackend:
    """Routes as the loop would publish them; ensure() answered by `answer` (None: never)."""

    def __init__(self, route: Route, answer: Callable[[], Readiness | None] = lambda: None) -> None:
        self.demand = Demand(time.monotonic)
        self.table = route_table((route,))
        self.answer = answer
        self.asked = 0
        self.ready = True           # the loop has published its first routes

    def published(self) -> bool:
        return self.ready

    def routes(self) -> dict[str, Route]:
        return self.table

    def ensure(self, model: str) -> Future[Readiness]:
        self.asked += 1
        fut: Future[Readiness] = Future()
        ready = self.answer()
        if ready is not None:
            fut.set_result(ready)
        return fut


def ok(body: object) -> httpx.Response:
    """A reply as a transport gives it: a stream not read yet."""
    return httpx.Response(200, headers={"content-type": "application/json"},
                          stream=httpx.ByteStream(json.dumps(body).encode()))


def client(backend: FakeBackend, upstream: Callable[[httpx.Request], httpx.Response] | None = None,
           **settings: object) -> httpx.AsyncClient:
    up = Upstream(transport=httpx.MockTransport(upstream or (lambda r: ok({"ok": 1}))))
    app = create_app(backend, GatewaySettings(**{"retry_delay_s": 0.01, "wait_grace_s": 0.1, **settings}),  # type: ignore[arg-type]
                     upstream=up)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080")


def post(c: httpx.AsyncClient, body: object, **kw: object) -> httpx.Response:
    return asyncio.run(_post(c, body, **kw))


async def _post(c: httpx.AsyncClient, body: object, **kw: object) -> httpx.Response:
    async with c:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json", **kw.pop("headers", {})}  # type: ignore[dict-item]
        return await c.post("/v1/chat/completions", content=content, headers=headers, **kw)  # type: ignore[arg-type]


def test_routes_by_alias_and_forwards_the_body_to_the_model() -> None:
    seen: list[httpx.Request] = []

    def upstream(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return ok({"choices": []})

    b = FakeBackend(RUNNING)
    r = post(client(b, upstream), {"model": "m-alias", "messages": []})
    assert r.status_code == 200 and r.json() == {"choices": []}
    assert str(seen[0].url) == "http://127.0.0.1:9001/v1/chat/completions"
    assert json.loads(seen[0].content)["model"] == "m-alias"
    assert b.demand.usage("m").inflight == 0, "the request left the in-flight count"


def test_unknown_model_is_404_naming_the_models() -> None:
    r = post(client(FakeBackend(RUNNING)), {"model": "nope"})
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "model 'nope' does not exist; the models here are: m",
                                  "type": "invalid_request_error", "code": "model_not_found"}}


@pytest.mark.parametrize("body, fix", [(b"{not json", "not JSON"), ({"messages": []}, "no \"model\"")])
def test_a_body_without_a_model_is_400(body: object, fix: str) -> None:
    r = post(client(FakeBackend(RUNNING)), body)
    assert r.status_code == 400 and fix in r.json()["error"]["message"]


def test_body_over_the_limit_is_413() -> None:
    r = post(client(FakeBackend(RUNNING), max_body_bytes=100), {"model": "m", "pad": "x" * 200})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_gateway_keys_are_required_and_the_model_gets_its_own_key(tmp_path: Path) -> None:
    key_file = tmp_path / "model.key"
    key_file.write_text("model-secret\n")
    route = Route("m", State.RUNNING, "127.0.0.1", 9001, api_key_file=str(key_file))
    seen: list[str] = []

    def upstream(r: httpx.Request) -> httpx.Response:
        seen.append(r.headers.get("authorization", ""))
        return ok({})

    b = FakeBackend(route)
    assert post(client(b, upstream, api_keys=frozenset({"gw-key"})), {"model": "m"}).status_code == 401
    r = post(client(b, upstream, api_keys=frozenset({"gw-key"})), {"model": "m"},
             headers={"Authorization": "Bearer gw-key"})
    assert r.status_code == 200
    assert seen == ["Bearer model-secret"], "the client's key stays at the gateway; the model gets its own"


def test_a_start_that_takes_too_long_is_504_and_the_wait_is_cancelled() -> None:
    b = FakeBackend(STOPPED)
    r = post(client(b), {"model": "m"})
    assert r.status_code == 504 and r.json()["error"]["code"] == "start_timeout"
    assert b.demand.usage("m").waiting == 0


# The bounded queue and its Retry-After: test_survivors_gateway.py (ordered by an event, not by this
# file's real 0.2 s start timeout, which only the 504 test above waits out: there the deadline is the point).


@pytest.mark.parametrize("code, status", [("fatal", 503), ("too_big", 503), ("stopped", 503), ("unknown", 404)])
def test_the_loops_refusals_become_openai_errors(code: str, status: int) -> None:
    b = FakeBackend(STOPPED, answer=lambda: Readiness(code, f"why: {code}"))  # type: ignore[arg-type]
    r = post(client(b), {"model": "m"})
    assert r.status_code == status and r.json()["error"]["message"] == f"why: {code}"


def test_a_request_the_model_never_got_is_sent_again_once_it_is_ready() -> None:
    calls = []

    def upstream(r: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=r)
        return ok({"ok": True})

    b = FakeBackend(RUNNING, answer=lambda: Readiness("ok", route=RUNNING))
    r = post(client(b, upstream), {"model": "m"})
    assert r.status_code == 200 and len(calls) == 3
    assert b.demand.usage("m").inflight == 0


def test_a_request_lost_after_sending_is_retried_once_then_502() -> None:
    sent = []

    def upstream(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=r)

    b = FakeBackend(RUNNING)
    r = post(client(b, upstream), {"model": "m"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert len(sent) == 2, "one re-send, not a loop (the request itself may be what crashes the model)"
    assert b.demand.usage("m").inflight == 0


def test_a_stream_cut_mid_way_ends_with_an_sse_error_event_and_done() -> None:
    class Cut(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
            raise httpx.ReadError("connection reset")

    def upstream(r: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Cut())

    r = post(client(FakeBackend(RUNNING), upstream), {"model": "m", "stream": True})
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[0].startswith('{"choices"')
    assert json.loads(events[1])["error"]["code"] == "upstream_error"
    assert events[-1] == "[DONE]"


def test_models_lists_names_and_aliases() -> None:
    async def get() -> httpx.Response:
        async with client(FakeBackend(RUNNING)) as c:
            return await c.get("/v1/models")

    data = asyncio.run(get()).json()["data"]
    assert [(m["id"], m.get("alias_of")) for m in data] == [("m", None), ("m-alias", "m")]
