"""A model that answers 503 `Loading model` did not run the request: the gateway waits for it and sends the
request again, so a client never sees a load; any other 503 is relayed as it came, whole."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx

from supervisor.core.commands import Readiness
from tests.unit.test_gateway_app import RUNNING, FakeBackend, client, ok, post

LOADING = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}


def loading() -> httpx.Response:
    # as llama-server writes it (server-http.cpp): compact JSON, 75 bytes
    return httpx.Response(503, headers={"content-type": "application/json; charset=utf-8"},
                          stream=httpx.ByteStream(json.dumps(LOADING, separators=(",", ":")).encode()))


def backend() -> FakeBackend:
    return FakeBackend(RUNNING, answer=lambda: Readiness("ok", route=RUNNING))


def test_a_loading_answer_is_not_relayed_the_request_is_sent_again() -> None:
    sent: list[float] = []

    def upstream(r: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        return loading() if len(sent) < 3 else ok({"answer": 42})

    b = backend()
    r = post(client(b, upstream, retry_delay_s=0.02, wait_grace_s=2.0), {"model": "m"})
    assert r.status_code == 200 and r.json() == {"answer": 42}, r.text
    assert len(sent) == 3
    assert sent[2] - sent[1] >= 0.03, "the wait doubles (0.02 s, then 0.04 s)"
    assert b.demand.usage("m").inflight == 0


def test_past_the_deadline_the_loading_answer_is_relayed() -> None:
    sent: list[float] = []

    def upstream(r: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        return loading()

    b = backend()
    t0 = time.monotonic()
    r = post(client(b, upstream, retry_delay_s=0.02, wait_grace_s=0.3), {"model": "m"})
    assert r.status_code == 503 and r.json() == LOADING
    assert len(sent) >= 2 and time.monotonic() - t0 < 2.0      # deadline: start timeout 0.2 s + grace 0.3 s
    assert b.demand.usage("m").inflight == 0


class Chunks(httpx.AsyncByteStream):
    """A body in chunks of `size` bytes, as a socket gives it."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size = data, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.size):
            yield self.data[i:i + self.size]


def test_another_503_is_relayed_at_once_whole() -> None:
    sent: list[int] = []
    busy = {"error": {"message": "no slot available", "type": "unavailable_error", "code": 503}}
    big = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}, "pad": "x" * 10_000}

    def upstream(r: httpx.Request) -> httpx.Response:
        sent.append(1)
        body = json.dumps(busy if len(sent) == 1 else big).encode()
        return httpx.Response(503, headers={"content-type": "application/json"}, stream=Chunks(body, 1000))

    b = backend()
    r = post(client(b, upstream, retry_delay_s=0.02, wait_grace_s=2.0), {"model": "m"})
    assert r.status_code == 503 and r.json() == busy and len(sent) == 1
    # longer than what is read ahead (5 chunks of 1,000 bytes, then the other 6): not llama-server's load answer
    r = post(client(b, upstream, retry_delay_s=0.02, wait_grace_s=2.0), {"model": "m"})
    assert r.status_code == 503 and r.json() == big and len(sent) == 2
    assert b.demand.usage("m").inflight == 0
