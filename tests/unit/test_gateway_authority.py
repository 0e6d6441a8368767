"""Who may use a model through the gateway (issue 15, items 4, 6, 10): a model's own key is never
bypassed; a key file of several lines sends one key and never a 500; a transport error is a 502
that logs no header value; a `#` inside a gateway key is part of it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from supervisor.core.lifecycle import State
from supervisor.core.routing import Route
from supervisor.errors import ConfigError
from supervisor.gateway.keys import parse_keys, read_gateway_keys

from .test_gateway_app import RUNNING, FakeBackend, client, ok

JSON = {"content-type": "application/json"}


def keyed(tmp_path: Path, text: str = "model-secret\n") -> Route:
    key_file = tmp_path / "model.key"
    key_file.write_text(text)
    return Route("k", State.RUNNING, "127.0.0.1", 9002, api_key_file=str(key_file))


def exchange(routes: list[Route], path: str, *, token: str | None = None, method: str = "POST",
             body: object | None = None, gateway_keys: frozenset[str] = frozenset(),
             upstream: object = None) -> tuple[httpx.Response, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return upstream(r) if callable(upstream) else ok({"ok": 1})

    backend = FakeBackend(routes[0])
    for r in routes[1:]:
        backend.table.update({r.name: r})
    headers = dict(JSON) | ({"authorization": f"Bearer {token}"} if token is not None else {})

    async def go() -> httpx.Response:
        async with client(backend, record, api_keys=gateway_keys) as c:
            content = json.dumps(body).encode() if body is not None else b""
            return await c.request(method, path, headers=headers, content=content)

    return asyncio.run(go()), seen


# --- item 4: a model's key is never bypassed ------------------------------------------------------

@pytest.mark.parametrize("token", [None, "", "wrong", "model-secret-but-longer"])
def test_an_open_gateway_does_not_use_a_keyed_models_key_for_a_caller_without_it(tmp_path: Path,
                                                                               token: str | None) -> None:
    r, seen = exchange([keyed(tmp_path)], "/v1/chat/completions", token=token, body={"model": "k"})
    assert r.status_code == 401 and seen == []
    assert "has its own API key" in r.json()["error"]["message"]
    assert "--gateway-api-keys-file" in r.json()["error"]["message"], "the fix is named"
    r, seen = exchange([keyed(tmp_path)], "/v1/chat/completions", token="model-secret", body={"model": "k"})
    assert r.status_code == 200 and [s.headers["authorization"] for s in seen] == ["Bearer model-secret"]


@pytest.mark.parametrize("path, method", [("/upstream/k/props", "GET"), ("/upstream/k/tokenize", "POST")])
def test_upstream_does_not_bypass_the_models_key_either(tmp_path: Path, path: str, method: str) -> None:
    r, seen = exchange([keyed(tmp_path)], path, method=method, body={} if method == "POST" else None)
    assert r.status_code == 401 and seen == []


def test_a_models_key_opens_that_model_only_a_gateway_key_opens_all(tmp_path: Path) -> None:
    routes = [keyed(tmp_path), RUNNING]
    gw = frozenset({"gw-key"})
    r, seen = exchange(routes, "/v1/chat/completions", token="gw-key", body={"model": "k"}, gateway_keys=gw)
    assert r.status_code == 200 and [s.headers["authorization"] for s in seen] == ["Bearer model-secret"]
    r, _ = exchange(routes, "/v1/chat/completions", token="model-secret", body={"model": "m"}, gateway_keys=gw)
    assert r.status_code == 401, "an unkeyed model behind gateway keys needs a gateway key"
    r, _ = exchange(routes, "/v1/chat/completions", token="model-secret", body={"model": "k"}, gateway_keys=gw)
    assert r.status_code == 200
    r, _ = exchange(routes, "/v1/chat/completions", token="anything", body={"model": "m"})
    assert r.status_code == 200, "an open gateway still serves unkeyed models whatever the client sends"


def test_models_are_listed_to_whoever_may_use_the_gateway(tmp_path: Path) -> None:
    routes = [keyed(tmp_path), RUNNING]
    r, _ = exchange(routes, "/v1/models", method="GET")
    assert r.status_code == 200 and {m["id"] for m in r.json()["data"]} >= {"k", "m"}, "names are no secret"
    r, _ = exchange(routes, "/v1/models", method="GET", gateway_keys=frozenset({"gw-key"}))
    assert r.status_code == 401
    r, _ = exchange(routes, "/v1/models", method="GET", token="model-secret", gateway_keys=frozenset({"gw-key"}))
    assert r.status_code == 200


# --- item 6: a key file of several lines ----------------------------------------------------------

def test_a_multi_line_key_file_sends_one_key_and_accepts_each(tmp_path: Path) -> None:
    route = keyed(tmp_path, "# the keys\nfirst-key\nsecond-key\n\n")
    for token in ("first-key", "second-key"):
        r, seen = exchange([route], "/v1/chat/completions", token=token, body={"model": "k"})
        assert r.status_code == 200
        assert [s.headers["authorization"] for s in seen] == ["Bearer first-key"], "one key, one line"


def test_a_transport_error_is_a_502_that_logs_no_header_value(tmp_path: Path) -> None:
    def refuse(r: httpx.Request) -> httpx.Response:     # as h11 refuses a header value it cannot send
        raise httpx.LocalProtocolError(f"Illegal header value {r.headers['authorization']!r}")

    with capture_logs() as logs:
        r, seen = exchange([keyed(tmp_path)], "/v1/chat/completions", token="model-secret",
                           body={"model": "k"}, upstream=refuse)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert "LocalProtocolError" in r.json()["error"]["message"] and "model-secret" not in r.text
    assert len(seen) == 1, "not re-sent: it would fail the same way"
    assert logs and "model-secret" not in repr(logs)


def test_a_key_that_is_no_header_value_is_a_502_not_a_500(tmp_path: Path) -> None:
    route = keyed(tmp_path, "clé\n")                 # not ASCII: httpx cannot put it in a header
    r, seen = exchange([route], "/v1/chat/completions", token="gw-key", body={"model": "k"},
                       gateway_keys=frozenset({"gw-key"}))
    assert r.status_code == 502 and seen == []


# --- item 10: the gateway's keys file -------------------------------------------------------------

def test_a_hash_inside_a_key_is_part_of_it_and_only_leading_hashes_are_comments(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# operators\nabc#def\n  # indented comment\n\nxyz \n")
    assert read_gateway_keys(f) == frozenset({"abc#def", "xyz"})
    assert parse_keys("a\r\nb\n#c\na\n") == ("a", "b")
    r, _ = exchange([RUNNING], "/v1/chat/completions", token="abc#def", body={"model": "m"},
                    gateway_keys=read_gateway_keys(f))
    assert r.status_code == 200
    r, _ = exchange([RUNNING], "/v1/chat/completions", token="abc", body={"model": "m"},
                    gateway_keys=read_gateway_keys(f))
    assert r.status_code == 401
    f.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="no key in it"):
        read_gateway_keys(f)
