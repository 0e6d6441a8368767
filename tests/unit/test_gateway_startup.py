"""The gateway before the loop's first routes (issue 15, item 13): /health says 'starting' (503), and
a request waits for the routes instead of a 404 'the models here are: none'."""

from __future__ import annotations

import asyncio
import threading

import httpx

from supervisor.daemon.controller import DaemonController
from supervisor.gateway.app import GatewaySettings, create_app
from supervisor.gateway.proxy import Upstream

from .helpers import desired
from .test_gateway_app import RUNNING, FakeBackend, client, ok
from .test_loop import Harness

LOCAL = "http://127.0.0.1:8080"


def test_health_says_starting_until_the_routes_are_published() -> None:
    b = FakeBackend(RUNNING)
    b.ready = False

    async def go() -> list[httpx.Response]:
        async with client(b) as c:
            before = await c.get("/health")
            b.ready = True
            return [before, await c.get("/health")]

    before, after = asyncio.run(go())
    assert before.status_code == 503 and before.json() == {"status": "starting"}
    assert after.status_code == 200 and after.json()["status"] == "ok"


def test_a_request_before_the_first_routes_waits_for_them() -> None:
    b = FakeBackend(RUNNING)
    b.ready = False

    async def go() -> httpx.Response:
        async with client(b) as c:
            request = asyncio.create_task(c.post("/v1/chat/completions", json={"model": "m"}))
            await asyncio.sleep(0.1)
            assert not request.done(), "held, not answered"
            b.ready = True
            return await request

    assert asyncio.run(go()).status_code == 200


def test_the_hold_is_bounded() -> None:
    b = FakeBackend(RUNNING)
    b.ready = False

    async def go() -> httpx.Response:
        async with client(b, startup_hold_s=0.05) as c:
            return await c.post("/v1/chat/completions", json={"model": "m"})

    r = asyncio.run(go())
    assert r.status_code == 503 and r.json()["error"]["code"] == "starting" and r.headers["retry-after"] == "1"


def test_the_daemons_gateway_lists_the_manifests_models_from_its_first_answer() -> None:
    """The real loop and controller: the manifests are read, the loop's first pass not done yet."""
    h = Harness([desired("a", port=18081)])
    app = create_app(DaemonController(h.sup), GatewaySettings(), upstream=Upstream(
        transport=httpx.MockTransport(lambda r: httpx.Response(500))))

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as c:
            health = await c.get("/health")
            models = asyncio.create_task(c.get("/v1/models"))
            await asyncio.sleep(0.05)
            pass_done = threading.Thread(target=h.step)        # the loop thread's first pass
            pass_done.start()
            r = await models
            pass_done.join()
            return health, r

    health, models = asyncio.run(go())
    assert health.status_code == 503
    assert [m["id"] for m in models.json()["data"]] == ["a"]
    assert h.sup.published.is_set()


def test_a_request_for_an_on_demand_model_before_the_first_pass_is_held_then_served_never_404() -> None:
    """Issue 17's startup race, through the real loop and controller: the manifests are read, the first
    pass not done; a request for an on-demand model in them waits, then starts it and is served."""
    from supervisor.core.lifecycle import State
    from supervisor.core.spec import LoadPolicy, Serving

    h = Harness([desired("lazy", port=18090, serving=Serving(lifecycle=LoadPolicy.ON_DEMAND))])
    app = create_app(DaemonController(h.sup), GatewaySettings(), upstream=Upstream(
        transport=httpx.MockTransport(lambda r: ok({"ok": 1}))))

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as c:
            request = asyncio.create_task(c.post("/v1/chat/completions", json={"model": "lazy"}))
            await asyncio.sleep(0.05)
            assert not request.done(), "held until the first routes, not 404"
            await asyncio.to_thread(h.step)                    # the loop's first pass publishes the routes
            for _ in range(200):                               # the gateway asks the loop for the model
                if not h.q.empty():
                    break
                await asyncio.sleep(0.01)
            await asyncio.to_thread(h.step)
            assert h.state("lazy") is State.STARTING and not request.done()
            await asyncio.to_thread(h.healthy, "lazy")
            return await asyncio.wait_for(request, 5)

    r = asyncio.run(go())
    assert r.status_code == 200 and r.json() == {"ok": 1}
