"""Issue 22: survivors of gateway/app.py and gateway/endpoints.py. The endpoint allowlists exactly
(a security contract: docs/SECURITY.md), the loop's refusals as HTTP errors, the wait for a model
(metrics, a ready answer without a route, a draining model asked again) and /upstream/ (runs nothing,
forwards only the running model's allowed endpoints, once, with content-negotiation headers only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from supervisor.control.api import NullMetrics
from supervisor.core.commands import Readiness
from supervisor.core.lifecycle import State
from supervisor.core.routing import Route
from supervisor.gateway import endpoints
from supervisor.gateway.app import GatewaySettings, create_app
from supervisor.gateway.proxy import Upstream

from .test_gateway_app import RUNNING, STOPPED, FakeBackend, ok


class Metrics(NullMetrics):
    """The gateway's MetricsSink calls, in order; the loop's are ignored."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    def gateway_request(self, model: str, code: int) -> None:
        self.calls.append(("request", model, code))

    def gateway_queue(self, model: str, depth: int) -> None:
        self.calls.append(("queue", model, depth))

    def gateway_wait(self, model: str, seconds: float) -> None:
        self.calls.append(("wait", model, seconds))


def call(backend: FakeBackend, method: str, path: str, *, metrics: Metrics | None = None,
         upstream: Callable[[httpx.Request], httpx.Response] | None = None, **kw: object) -> httpx.Response:
    up = Upstream(transport=httpx.MockTransport(upstream or (lambda r: ok({"ok": 1}))))
    app = create_app(backend, GatewaySettings(retry_delay_s=0.01, wait_grace_s=0.1), metrics,
                     upstream=up)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080") as c:
            return await c.request(method, path, **kw)  # type: ignore[arg-type]
    return asyncio.run(go())


def chat(backend: FakeBackend, **kw: object) -> httpx.Response:
    return call(backend, "POST", "/v1/chat/completions", json={"model": "m"}, **kw)  # type: ignore[arg-type]


# --- endpoints.py ------------------------------------------------------------------------------

def test_the_inference_allowlist_is_exactly_these_paths() -> None:
    assert endpoints.INFERENCE == {
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
        "/v1/rerank", "/v1/reranking", "/v1/messages", "/v1/messages/count_tokens",
        "/v1/chat/completions/input_tokens", "/v1/responses/input_tokens"}
    for path in endpoints.INFERENCE:
        assert endpoints.check_inference(path) is None


def test_the_upstream_allowlist_is_exactly_these_reads_and_text_utilities() -> None:
    assert endpoints.UPSTREAM == {
        ("GET", "/health"), ("GET", "/v1/health"), ("GET", "/props"), ("GET", "/metrics"), ("GET", "/slots"),
        ("GET", "/models"), ("GET", "/v1/models"),
        ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/apply-template")}
    for method, path in endpoints.UPSTREAM:
        assert endpoints.check_upstream(method, path) is None


def test_a_refused_inference_path_names_itself_and_every_allowed_one() -> None:
    e = endpoints.check_inference("/v1/images/generations")
    assert e is not None and (e.status, e.code) == (404, "endpoint_not_allowed")
    assert e.message == ("POST /v1/images/generations is not forwarded by the gateway; it forwards: "
                         + ", ".join(sorted(endpoints.INFERENCE)))


def test_a_refused_upstream_call_names_method_path_and_every_allowed_one() -> None:
    e = endpoints.check_upstream("POST", "/health")        # the path is allowed, the method not
    assert e is not None and (e.status, e.code) == (404, "endpoint_not_allowed")
    allowed = ", ".join(f"{m} /upstream/<model>{p}" for m, p in sorted(endpoints.UPSTREAM))
    assert e.message == f"POST /upstream/<model>/health is not forwarded by the gateway; it forwards: {allowed}"
    assert allowed.startswith("GET /upstream/<model>/health, GET /upstream/<model>/metrics")


# --- the loop's refusals -----------------------------------------------------------------------

@pytest.mark.parametrize("code, status, type_, error_code", [
    ("unknown", 404, "invalid_request_error", "model_not_found"),
    ("too_big", 503, "server_error", "insufficient_memory"),
    ("fatal", 503, "server_error", "model_fatal"),
    ("stopped", 503, "server_error", "model_stopped"),
    ("shutting_down", 503, "server_error", "shutting_down"),
])
def test_each_refusal_in_full(code: str, status: int, type_: str, error_code: str) -> None:
    b = FakeBackend(STOPPED, answer=lambda: Readiness(code, f"why: {code}"))  # type: ignore[arg-type]
    m = Metrics()
    r = chat(b, metrics=m)
    assert r.status_code == status
    assert r.json() == {"error": {"message": f"why: {code}", "type": type_, "code": error_code}}
    assert ("request", "m", status) in m.calls


def test_a_shutdown_without_a_message_says_so() -> None:
    b = FakeBackend(STOPPED, answer=lambda: Readiness("shutting_down"))
    r = chat(b)
    assert r.status_code == 503
    assert r.json()["error"] == {"message": "the daemon is shutting down", "type": "server_error",
                                 "code": "shutting_down"}


def test_a_ready_answer_without_a_route_is_not_forwarded() -> None:
    sent: list[httpx.Request] = []
    b = FakeBackend(STOPPED, answer=lambda: Readiness("ok", "", None))

    def upstream(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        return ok({})

    r = chat(b, upstream=upstream)
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down" and sent == []


# --- waiting for a model -----------------------------------------------------------------------

def test_a_running_model_is_entered_at_once_without_the_queue() -> None:
    b = FakeBackend(RUNNING)
    m = Metrics()
    r = chat(b, metrics=m)
    assert r.status_code == 200 and b.asked == 0
    assert [c for c in m.calls if c[0] in ("queue", "wait")] == []


def test_the_wait_is_counted_in_the_queue_and_its_time_measured() -> None:
    b = FakeBackend(STOPPED, answer=lambda: Readiness("ok", route=RUNNING))
    m = Metrics()
    r = chat(b, metrics=m)
    assert r.status_code == 200 and b.asked == 1
    kinds = [(k, model) for k, model, _ in m.calls if k != "request"]
    assert kinds == [("queue", "m"), ("wait", "m"), ("queue", "m")]
    depths = [v for k, _, v in m.calls if k == "queue"]
    assert depths == [1, 0]
    wait = [v for k, _, v in m.calls if k == "wait"][0]
    assert isinstance(wait, float) and 0 <= wait < 5
    assert b.demand.usage("m").waiting == 0


def test_a_model_draining_when_ready_is_asked_again() -> None:
    b = FakeBackend(STOPPED)
    answers = iter([Readiness("ok", route=RUNNING), Readiness("ok", route=RUNNING)])

    def answer() -> Readiness:
        ready = next(answers)
        if b.asked == 1:
            b.demand.mark_draining("m")          # another model needs the room: wait again
        else:
            b.demand.undrain("m")
        return ready

    b.answer = answer
    r = chat(b)
    assert r.status_code == 200 and b.asked == 2


def test_a_timeout_is_504_and_counted() -> None:
    b = FakeBackend(STOPPED)
    m = Metrics()
    r = chat(b, metrics=m)
    assert r.status_code == 504
    assert r.json()["error"]["message"] == "model 'm' was not ready after 0s"
    assert ("request", "m", 504) in m.calls and b.asked == 1


# --- /upstream/ --------------------------------------------------------------------------------

def test_upstream_of_a_stopped_model_starts_nothing_and_says_why() -> None:
    b = FakeBackend(STOPPED, answer=lambda: Readiness("ok", route=RUNNING))
    r = call(b, "GET", "/upstream/m/health")
    assert r.status_code == 503 and b.asked == 0
    assert r.json()["error"] == {
        "message": "model 'm' is STOPPED, not running (/upstream/ does not start models: send a /v1/ request)",
        "type": "server_error", "code": "model_not_running"}


def test_upstream_of_a_draining_model_is_refused() -> None:
    b = FakeBackend(RUNNING)
    b.demand.mark_draining("m")
    r = call(b, "GET", "/upstream/m/health")
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_running"


def test_upstream_of_an_unknown_model_is_404() -> None:
    r = call(FakeBackend(RUNNING), "GET", "/upstream/nope/health")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_upstream_forwards_method_path_query_body_and_only_negotiation_headers_once() -> None:
    seen: list[httpx.Request] = []

    def upstream(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return ok({"tokens": [1]})

    b = FakeBackend(RUNNING)
    r = call(b, "POST", "/upstream/m-alias/tokenize?x=1", upstream=upstream, content=b'{"content":"hi"}',
             headers={"content-type": "application/json", "accept": "application/json", "user-agent": "t/1",
                      "accept-encoding": "identity", "x-secret": "no", "cookie": "c=1"})
    assert r.status_code == 200 and r.json() == {"tokens": [1]}
    assert len(seen) == 1 and seen[0].method == "POST"
    assert str(seen[0].url) == "http://127.0.0.1:9001/tokenize?x=1"
    assert json.loads(seen[0].content) == {"content": "hi"}
    h = seen[0].headers
    assert h["content-type"] == "application/json" and h["accept"] == "application/json"
    assert h["user-agent"] == "t/1" and h["accept-encoding"] == "identity"
    assert "x-secret" not in h and "cookie" not in h
    u = b.demand.usage("m")
    assert u.inflight == 0 and u.last_used is None, "monitoring is not use"


def test_upstream_does_not_resend_a_failed_request() -> None:
    sent: list[httpx.Request] = []

    def upstream(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        raise httpx.ConnectError("refused", request=r)

    r = call(FakeBackend(RUNNING), "GET", "/upstream/m/health", upstream=upstream)
    assert r.status_code == 502 and len(sent) == 1


def test_upstream_refuses_a_path_off_the_list_before_looking_up_the_model() -> None:
    r = call(FakeBackend(RUNNING), "GET", "/upstream/nope/slots/0")
    assert r.status_code == 404 and r.json()["error"]["code"] == "endpoint_not_allowed"


def test_an_inference_path_off_the_list_is_404_before_the_body_is_read() -> None:
    b = FakeBackend(RUNNING)
    r = call(b, "POST", "/v1/images/generations", json={"model": "m"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "endpoint_not_allowed"
    assert "POST /v1/images/generations" in r.json()["error"]["message"]


def test_a_route_with_no_port_is_not_running_for_upstream() -> None:
    b = FakeBackend(Route("m", State.RUNNING, "127.0.0.1", None, start_timeout_s=0.2))
    r = call(b, "GET", "/upstream/m/health")
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_running"
