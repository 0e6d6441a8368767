"""Issue 22: /upstream/<model>/... is a window on a running model, never a retrying client. A request
that failed after it may have reached llama-server (the connection dropped before any reply byte) is
answered 502 at once and never sent again, even when a second send would have worked: the caller
decides whether to repeat it. Observed from outside only: what the upstream received, what the client
got (the gateway's re-send rules are being reworked for stale pooled connections, issue 21)."""

from __future__ import annotations

import httpx
import pytest

from .test_gateway_app import RUNNING, FakeBackend, ok
from .test_survivors_gateway_app_more import call

LOST_AFTER_SENDING = [httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError]


@pytest.mark.parametrize("error", LOST_AFTER_SENDING, ids=lambda e: e.__name__)
def test_upstream_answers_502_after_one_send_when_the_request_was_lost_after_sending(
        error: type[httpx.TransportError]) -> None:
    sent: list[httpx.Request] = []

    def upstream(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        if len(sent) == 1:
            raise error("Server disconnected without sending a response.", request=r)
        return ok({"tokens": [1]})       # a second send would succeed: the gateway must not make it

    b = FakeBackend(RUNNING)
    r = call(b, "POST", "/upstream/m/tokenize", upstream=upstream, json={"content": "hi"})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "upstream_error"
    assert error.__name__ in r.json()["error"]["message"]
    assert len(sent) == 1, f"/upstream/ re-sent a request the model may have received ({len(sent)} sends)"
    assert [s.url.path for s in sent] == ["/tokenize"]
    u = b.demand.usage("m")
    assert u.inflight == 0 and u.last_used is None, "the failed call left nothing counted and was no use"
    assert b.asked == 0, "/upstream/ asked the loop for the model (it starts and waits for nothing)"
