"""The gateway against the real llama-server while it loads: its 503 `Loading model` (the real binary's
body, not a hand-written one) is not relayed; the request is sent again and answered once it has loaded.
The daemon never routes to a loading model (it publishes RUNNING after a /health 200): this drives the
gateway's second line directly, with a route that says RUNNING from the container's start."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from supervisor.core.commands import Readiness
from supervisor.core.lifecycle import State
from supervisor.core.routing import Route
from supervisor.gateway.app import GatewaySettings, create_app
from supervisor.gateway.proxy import Upstream, _loading
from tests.unit.test_gateway_app import FakeBackend

from .daemon_harness import free_port, wait_for


class Seen(httpx.AsyncBaseTransport):
    """The real transport, recording each upstream answer's status."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        r = await self.inner.handle_async_request(request)
        self.statuses.append(r.status_code)
        return r

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def loading_server(docker_client: docker.DockerClient, image_record: Any, demo_model: Path) -> Iterator[int]:
    """A llama-server container just started, throttled to a quarter of a core so that its load lasts a
    few seconds; its port once it answers HTTP (503 while it loads)."""
    port = free_port()
    c = docker_client.containers.run(
        image_record.image_id,
        ["-m", "/models/m.gguf", "-c", "512", "-t", "1", "--host", "0.0.0.0", "--port", "8080"],
        name=f"llama-supervisor-test-loading-{uuid.uuid4().hex[:6]}", detach=True, user="65532:65532",
        read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"], nano_cpus=250_000_000,
        ports={"8080/tcp": ("127.0.0.1", port)},
        volumes={str(demo_model): {"bind": "/models/m.gguf", "mode": "ro"}})
    try:
        yield port
    finally:
        c.remove(force=True)


def test_a_request_to_a_loading_server_is_answered_once_it_has_loaded(loading_server: int) -> None:
    port = loading_server
    first: list[httpx.Response] = []

    def answered() -> bool:
        try:
            first.append(httpx.get(f"http://127.0.0.1:{port}/health", timeout=1))
            return True
        except httpx.HTTPError:
            return False

    wait_for(answered, 30, "llama-server answering HTTP", step=0.01)
    assert first[0].status_code == 503 and _loading(first[0].content), \
        f"the premise: llama-server answers 503 Loading model while it loads; it answered {first[0].status_code} {first[0].text}"

    route = Route("m", State.RUNNING, "127.0.0.1", port, start_timeout_s=60.0)
    seen = Seen()
    app = create_app(FakeBackend(route, answer=lambda: Readiness("ok", route=route)), GatewaySettings(),
                     upstream=Upstream(transport=seen))

    async def ask() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080",
                                     timeout=90) as c:
            return await c.post("/v1/completions", content=json.dumps(
                {"model": "m", "prompt": "Hello", "max_tokens": 2}), headers={"content-type": "application/json"})

    t0 = time.monotonic()
    r = asyncio.run(ask())
    took = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    assert seen.statuses[0] == 503 and seen.statuses[-1] == 200, seen.statuses
    assert set(seen.statuses[:-1]) == {503}, seen.statuses
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    print(f"answered after {took:.2f} s; upstream answers {seen.statuses}")
