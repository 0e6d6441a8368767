"""Mutants of gateway/app.py that survived `make mutate` (docs/TESTING.md): what /health,
GET /v1/models and GET /v1/models/{model} answer, field by field (clients read these)."""

from __future__ import annotations

import asyncio

import httpx

from supervisor.core.lifecycle import State
from supervisor.core.routing import Route, route_table

from .test_gateway_app import RUNNING, FakeBackend, client

IDLE = Route("idle", State.STOPPED, "127.0.0.1", None, on_demand=True, start_timeout_s=0.2)
OTHER = Route("other", State.RUNNING, "127.0.0.1", 9002, start_timeout_s=0.2)


def get(backend: FakeBackend, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        async with client(backend) as c:
            return await c.get(path)
    return asyncio.run(go())


def backend() -> FakeBackend:
    b = FakeBackend(RUNNING)
    b.table = route_table((RUNNING, IDLE, OTHER))
    return b


def test_health_counts_each_model_once_by_state() -> None:
    r = get(backend(), "/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "models": 3, "states": {"RUNNING": 2, "STOPPED": 1}}


def test_the_model_list_gives_every_field_for_names_and_aliases() -> None:
    r = get(backend(), "/v1/models")
    assert r.status_code == 200
    base = {"object": "model", "created": 0, "owned_by": "llama-supervisor"}
    assert r.json() == {"object": "list", "data": [
        {**base, "id": "idle", "state": "STOPPED", "lifecycle": "on-demand", "aliases": []},
        {**base, "id": "m", "state": "RUNNING", "lifecycle": "always", "aliases": ["m-alias"]},
        {**base, "id": "m-alias", "state": "RUNNING", "lifecycle": "always", "aliases": ["m-alias"],
         "alias_of": "m"},
        {**base, "id": "other", "state": "RUNNING", "lifecycle": "always", "aliases": []},
    ]}


def test_one_model_by_name_or_alias_and_an_unknown_one_is_404_naming_the_models() -> None:
    base = {"object": "model", "created": 0, "owned_by": "llama-supervisor"}
    assert get(backend(), "/v1/models/m").json() == {**base, "id": "m", "state": "RUNNING", "alias_of": None}
    assert get(backend(), "/v1/models/m-alias").json() == {**base, "id": "m-alias", "state": "RUNNING",
                                                           "alias_of": "m"}
    missing = get(backend(), "/v1/models/nope")
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["code"] == "model_not_found" and "idle, m, other" in error["message"]
