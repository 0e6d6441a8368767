"""A graceful stop: on SIGTERM or SIGINT the gateway stops accepting and its requests in flight (streams
included) finish, up to --shutdown-grace; only then is the loop told to shut down.

The loop keeps running meanwhile, so requests that wait for a model are still routed, and the
models keep running after the daemon exits (they are adopted by the next one). A second SIGTERM or
SIGINT cuts the wait short. Signals other than those two, and every signal before the gateway runs,
go to the loop at once, as before.

The signal handler only records; the main thread, which waits for the loop, does the waiting (`step`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Protocol


class Drainable(Protocol):
    def close(self) -> None: ...     # stop accepting, wait for the requests in flight (bounded), stop
    def cut(self) -> None: ...       # stop waiting


class GracefulStop:
    def __init__(self, forward: Callable[[int], None]) -> None:
        self.forward = forward          # hands a signal to the loop (a SignalReceived on its queue)
        self.gateway: Drainable | None = None
        self.pending: int | None = None  # the signal whose drain the main thread has yet to do
        self._drained = False

    def on_signal(self, signum: int) -> None:
        """From the signal handler: record, nothing else."""
        if signum not in (signal.SIGTERM, signal.SIGINT) or self.gateway is None:
            self.forward(signum)
            return
        if self.pending is None:
            self.pending = signum
            return
        self.gateway.cut()              # a second one: stop waiting for the requests in flight
        self.forward(signum)

    def step(self) -> None:
        """From the main thread, between its waits for the loop: drain once a signal asked for it, then tell the loop."""
        if self.pending is None or self._drained or self.gateway is None:
            return
        self._drained = True
        self.gateway.close()
        self.forward(self.pending)
