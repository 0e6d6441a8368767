"""Until the loop has published its first routes, the gateway is starting: /health says so (503),
and every other request waits for them (bounded), instead of a 404 'the models here are: none'.

The gateway listens before the loop's first pass ends (that pass reads the manifests, lists the
containers and may start models: up to seconds), so for that long the routes are empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
from starlette.responses import JSONResponse

from supervisor.gateway import errors

POLL_S = 0.02


class StartupGate:
    """ASGI middleware: hold requests until `published()` is true, at most `hold_s`."""

    def __init__(self, app: Any, published: Callable[[], bool], *, hold_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.published = published
        self.hold_s = hold_s
        self.clock = clock
        self._open = False            # once published, always: no more checks

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._open:
            if self.published():
                self._open = True
            elif scope["path"] == "/health":
                await JSONResponse({"status": "starting"}, status_code=503)(scope, receive, send)
                return
            else:
                t0 = self.clock()
                while not self.published():
                    if self.clock() - t0 >= self.hold_s:
                        await errors.starting(self.clock() - t0).response()(scope, receive, send)
                        return
                    await anyio.sleep(POLL_S)
                self._open = True
        await self.app(scope, receive, send)
