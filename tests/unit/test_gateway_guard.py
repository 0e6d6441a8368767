"""The gateway against a web page in the operator's browser (issue 15, item 4): DNS rebinding (a
foreign Host), cross-site requests (Origin, Sec-Fetch-Site), bodies that are not JSON; and the
endpoints it forwards (item 1): allowlists, everything else 404."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from supervisor.gateway.guard import LOOPBACK_NAMES, allowed_hosts, split_host

from .test_gateway_app import RUNNING, FakeBackend, client, ok

JSON = {"content-type": "application/json"}
BODY = json.dumps({"model": "m"}).encode()


def send(method: str, path: str, headers: dict[str, str], body: bytes = b"", *,
         upstream: httpx.MockTransport | None = None, **settings: object) -> httpx.Response:
    seen: list[httpx.Request] = []

    def record(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return ok({"ok": 1})

    async def go() -> httpx.Response:
        async with client(FakeBackend(RUNNING), record, **settings) as c:
            r = await c.request(method, path, headers=headers, content=body)
            r.extensions["upstream"] = seen     # for the tests that look
            return r

    return asyncio.run(go())


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io:8080", "[::2]:8080",
                                  "localhost:8080:1", ""])
@pytest.mark.parametrize("path", ["/health", "/v1/models"])
def test_a_foreign_host_is_421_even_for_health(host: str, path: str) -> None:
    r = send("GET", path, {"host": host})
    assert r.status_code == 421 and r.json()["error"]["code"] == "misdirected_request"
    assert "--gateway-allowed-hosts" in r.json()["error"]["message"]


def test_a_rebinding_post_never_reaches_the_model_and_loopback_names_do() -> None:
    r = send("POST", "/v1/chat/completions", {"host": "evil.example:8080", **JSON}, BODY)
    assert r.status_code == 421 and r.extensions["upstream"] == []
    for host in ["127.0.0.1:8080", "127.0.0.1", "localhost:8080", "LOCALHOST", "[::1]:8080", "localhost."]:
        assert send("GET", "/health", {"host": host}).status_code == 200, host
        r = send("POST", "/v1/chat/completions", {"host": host, **JSON}, BODY)
        assert r.status_code == 200 and len(r.extensions["upstream"]) == 1, host
    assert split_host("[::1]:80") == ("::1", 80) and split_host("[::1]") == ("::1", None)
    assert split_host("a:b") is split_host("[::1") is split_host(":80") is None


def test_names_given_with_the_option_are_answered() -> None:
    hosts = allowed_hosts("0.0.0.0", ["gpu-box.lan", "192.168.1.5"])
    assert hosts == LOOPBACK_NAMES | {"gpu-box.lan", "192.168.1.5"}, "0.0.0.0 itself is no name"
    assert send("GET", "/health", {"host": "gpu-box.lan:8080"}, allowed_hosts=hosts).status_code == 200
    assert send("GET", "/health", {"host": "other.lan:8080"}, allowed_hosts=hosts).status_code == 421
    assert allowed_hosts("[::1]") == LOOPBACK_NAMES and "10.0.0.2" in allowed_hosts("10.0.0.2")


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:3000", "http://localhost:8080",
                                    "file://", "http://127.0.0.1:8080/x", "chrome-extension://abc"])
@pytest.mark.parametrize("method, path", [("POST", "/v1/chat/completions"), ("POST", "/upstream/m/tokenize"),
                                          ("GET", "/v1/models"), ("GET", "/upstream/m/props")])
def test_a_cross_site_origin_is_403_before_anything_runs(origin: str, method: str, path: str) -> None:
    r = send(method, path, {"host": "127.0.0.1:8080", "origin": origin, **JSON}, BODY if method == "POST" else b"")
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request"
    assert r.extensions["upstream"] == []


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_sec_fetch_site_from_another_site_is_403_the_gateways_own_origin_is_fine(site: str) -> None:
    r = send("POST", "/v1/chat/completions", {"host": "127.0.0.1:8080", "sec-fetch-site": site, **JSON}, BODY)
    assert r.status_code == 403 and r.extensions["upstream"] == []
    for headers in ({"origin": "http://127.0.0.1:8080"}, {}, {"sec-fetch-site": "same-origin"},
                    {"sec-fetch-site": "none"}):
        r = send("POST", "/v1/chat/completions", {"host": "127.0.0.1:8080", **JSON, **headers}, BODY)
        assert r.status_code == 200, headers


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/upstream/m/tokenize"])
def test_a_body_that_is_not_said_to_be_json_is_415(content_type: str | None, path: str) -> None:
    headers = {"host": "127.0.0.1:8080"} | ({"content-type": content_type} if content_type else {})
    r = send("POST", path, headers, BODY)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert r.extensions["upstream"] == []
    r = send("POST", path, {"host": "127.0.0.1", "content-type": "Application/JSON; charset=utf-8"}, BODY)
    assert r.status_code == 200, "JSON with a charset is JSON"


def test_the_models_cors_headers_are_not_relayed() -> None:
    def upstream(r: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"access-control-allow-origin": "*", "x-kept": "1"},
                              stream=httpx.ByteStream(b"{}"))

    async def go() -> httpx.Response:
        async with client(FakeBackend(RUNNING), upstream) as c:
            return await c.get("/upstream/m/props")

    r = asyncio.run(go())
    assert r.status_code == 200 and r.headers.get("x-kept") == "1"
    assert "access-control-allow-origin" not in r.headers


# --- what is forwarded (item 1) ------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [("GET", "/upstream/m/tools"), ("POST", "/upstream/m/tools"),
                                          ("GET", "/upstream/m/cors-proxy?url=http://169.254.169.254/"),
                                          ("POST", "/upstream/m/slots/0?action=erase"), ("POST", "/upstream/m/props"),
                                          ("POST", "/upstream/m/lora-adapters"), ("POST", "/upstream/m/models/load"),
                                          ("GET", "/upstream/m/"), ("DELETE", "/upstream/m/v1/stream"),
                                          ("GET", "/upstream/m/%2e%2e/tools")])
def test_upstream_forwards_only_the_allowed_endpoints(method: str, path: str) -> None:
    r = send(method, path, {"host": "127.0.0.1:8080", **JSON}, b"{}" if method != "GET" else b"")
    assert r.status_code == 404 and r.extensions["upstream"] == []
    assert "GET /upstream/<model>/health" in r.json()["error"]["message"], "the answer names what is forwarded"
    for method, path in [("GET", "/upstream/m/health"), ("GET", "/upstream/m/slots"), ("GET", "/upstream/m/props"),
                         ("GET", "/upstream/m/metrics"), ("POST", "/upstream/m/tokenize")]:
        r = send(method, path, {"host": "127.0.0.1:8080", **JSON}, b"{}" if method == "POST" else b"")
        assert r.status_code == 200 and str(r.extensions["upstream"][0].url).endswith(path[len("/upstream/m"):])


@pytest.mark.parametrize("path", ["/v1/unknown", "/v1/chat/completions/control", "/v1/systemone",
                                  "/v1/streams/lookup", "/v1/audio/transcriptions"])
def test_v1_forwards_only_inference_endpoints(path: str) -> None:
    r = send("POST", path, {"host": "127.0.0.1:8080", **JSON}, BODY)
    assert r.status_code == 404 and r.json()["error"]["code"] == "endpoint_not_allowed"
    assert "/v1/chat/completions" in r.json()["error"]["message"] and r.extensions["upstream"] == []
    for ok_path in ["/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages", "/v1/rerank",
                    "/v1/messages/count_tokens"]:
        r = send("POST", ok_path, {"host": "127.0.0.1:8080", **JSON}, BODY)
        assert r.status_code == 200 and str(r.extensions["upstream"][-1].url) == f"http://127.0.0.1:9001{ok_path}"
