"""Records each inference request the gateway serves in `core.activity.Activity` (the console's
Activity page), as an ASGI middleware around the gateway's app.

Only POST /v1/... is recorded. What the middleware sees itself: the answer's status, its first body
byte (time to first token, for a stream), the last TAIL_BYTES of the body (the token count), the end,
and a client that went away before the end. The handler adds what only it knows (the model, the time
spent waiting for it) through `Activity.update` with the id kept in the scope under `SCOPE_KEY`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from supervisor.core.activity import TAIL_BYTES, Activity, tokens_from_tail

SCOPE_KEY = "supervisor.activity"


class RecordActivity:
    def __init__(self, app: Any, activity: Activity, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.app = app
        self.activity = activity
        self.clock = clock
        self.wall = wall

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        t0 = self.clock()
        rid = self.activity.begin(self.wall(), "", scope["path"])
        scope[SCOPE_KEY] = rid
        status, tail, ended, gone = 0, b"", False, False
        first: float | None = None

        async def watch_receive() -> Any:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not ended:
                gone = True
            return message

        async def watch_send(message: Any) -> None:
            nonlocal status, tail, ended, first
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                       for k, v in message.get("headers", [])):
                    self.activity.update(rid, streamed=True)
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body and first is None:
                    first = self.clock() - t0
                    self.activity.update(rid, ttft_s=first)
                tail = (tail + body[-TAIL_BYTES:])[-TAIL_BYTES:]
                if not message.get("more_body", False):
                    ended = True
            await send(message)

        try:
            await self.app(scope, watch_receive, watch_send)
        finally:
            self.activity.end(rid, status=status if ended or not gone else 499, duration_s=self.clock() - t0,
                              tokens=tokens_from_tail(tail), client_gone=gone and not ended)
