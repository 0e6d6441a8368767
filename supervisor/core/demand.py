"""Requests per model, shared by the gateway's thread and the loop thread.

The one piece of state two threads touch, kept tiny and under one lock, because the
race it closes is real: the loop must never stop a model between the moment the
gateway decided to send it a request and the moment the request is in flight.
`enter` (gateway) and `try_drain` (loop) are atomic with respect to each other: once
a model is draining no new request enters it, and it is only drained while nothing
is in flight and no request the loop let in (`admit`) is still on its way in. Every field is read and written under the lock, `contended` included
(the loop sets it, the gateway's threads read it). No I/O: it lives in the core, below
both the gateway and the daemon that share it.

Requests are also counted per published port (`port=`: the route the gateway was given), for a
start-first recreate: once the route moves to the new container, the old one's port is *retired*
(`retire`): a request that read the old route enters no more (it asks again), and the old container
drains only what is in flight on it (`inflight_on`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    inflight: int
    waiting: int
    last_used: float | None
    draining: bool
    admitted: int = 0        # requests the loop told to go ahead that have not entered yet


class Demand:
    def __init__(self, clock: Callable[[], float], wake: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self._wake = wake                       # tells the loop to look again (posts a Tick)
        self._lock = threading.Lock()
        self._inflight: dict[str, int] = {}
        self._waiting: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._draining: set[str] = set()
        self._admitted: dict[str, int] = {}     # the loop said "go ahead"; the gateway has not entered yet
        self._contended = False                 # the loop waits for memory: wake it when a model frees up
        self._on_port: dict[tuple[str, int], int] = {}   # (model, published port) -> requests in flight there
        self._retired: set[tuple[str, int]] = set()       # an old container's port after a start-first switch
        # told before a graceful stop, with the model's port: the gateway closes its idle connections there
        self._before_stop: list[Callable[[int], None]] = []

    # --- the gateway -------------------------------------------------------------------------

    def enter(self, model: str, *, touch: bool = True, admitted: bool = False, port: int | None = None) -> bool:
        """A request is about to be sent; False if the model is being drained (wait for it instead).
        touch=False: in flight, but not use that keeps an on-demand model loaded (monitoring).
        admitted=True: the loop let this request in (`admit`): it enters a model that holds new
        requests back (it arrived before the cutoff); the admission is used up either way.
        port: the published port of the route it goes to; False when that port is retired (the route
        moved: ask again)."""
        with self._lock:
            let_in = False
            if admitted and self._admitted.get(model, 0) > 0:
                self._admitted[model] -= 1
                let_in = True
            if port is not None and (model, port) in self._retired:
                return False
            if model in self._draining and not let_in:
                return False
            self._inflight[model] = self._inflight.get(model, 0) + 1
            if port is not None:
                self._on_port[model, port] = self._on_port.get((model, port), 0) + 1
            if touch:
                self._last_used[model] = self._clock()
            return True

    def leave(self, model: str, *, touch: bool = True, port: int | None = None) -> None:
        with self._lock:
            n = self._inflight.get(model, 0) - 1
            self._inflight[model] = max(0, n)
            if touch:
                self._last_used[model] = self._clock()
            wake = n <= 0 and (model in self._draining or self._contended)
            if port is not None and (model, port) in self._on_port:
                left = self._on_port[model, port] - 1
                if left > 0:
                    self._on_port[model, port] = left
                else:
                    del self._on_port[model, port]
                    wake = wake or (model, port) in self._retired   # the old container is drained
        if wake:
            self._wake()

    def wait_begin(self, model: str, limit: int) -> bool:
        """Join the model's queue of requests waiting for it to be ready; False when it is full."""
        with self._lock:
            n = self._waiting.get(model, 0)
            if n >= limit:
                return False
            self._waiting[model] = n + 1
            return True

    def release(self, model: str) -> None:
        """An admission the gateway will not use (the client left, the wait timed out)."""
        with self._lock:
            n = self._admitted.get(model, 0) - 1
            self._admitted[model] = max(0, n)
            wake = n <= 0 and (model in self._draining or self._contended)
        if wake:
            self._wake()

    def wait_end(self, model: str) -> None:
        with self._lock:
            n = self._waiting.get(model, 0) - 1
            self._waiting[model] = max(0, n)
            wake = n <= 0 and self._contended
        if wake:
            self._wake()

    # --- the loop ------------------------------------------------------------------------------

    def contended(self) -> bool:
        """Whether the loop waits for memory (then the last request out of any model wakes it)."""
        with self._lock:
            return self._contended

    def set_contended(self, contended: bool) -> None:
        with self._lock:
            self._contended = contended

    def usage(self, model: str) -> Usage:
        with self._lock:
            return Usage(self._inflight.get(model, 0), self._waiting.get(model, 0),
                         self._last_used.get(model), model in self._draining, self._admitted.get(model, 0))

    def touch(self, model: str) -> None:
        """Count now as the model's last use (it was just started, or adopted)."""
        with self._lock:
            self._last_used[model] = self._clock()

    def admit(self, model: str) -> None:
        """The loop tells one waiting request to go ahead: it may enter even while new ones are held back,
        and the model is not drained before it has entered (or `release`d it)."""
        with self._lock:
            self._admitted[model] = self._admitted.get(model, 0) + 1

    def mark_draining(self, model: str) -> None:
        """No new request may enter; those in flight finish."""
        with self._lock:
            self._draining.add(model)

    def try_drain(self, model: str, *, waiting_ok: bool = False) -> bool:
        """If nothing is in flight, let in or (unless `waiting_ok`: the loop makes room, and those waiting
        wait for the model's next turn) waiting, mark it draining and answer True: it may be stopped now."""
        with self._lock:
            if self._inflight.get(model, 0) or self._admitted.get(model, 0):
                return False
            if self._waiting.get(model, 0) and not waiting_ok:
                return False
            self._draining.add(model)
            return True

    def undrain(self, model: str) -> None:
        with self._lock:
            self._draining.discard(model)

    def draining(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._draining)

    def retire(self, model: str, port: int) -> int:
        """The route moved off `port` (start-first): no request enters it any more; answers how many are
        in flight there (they finish)."""
        with self._lock:
            self._retired.add((model, port))
            return self._on_port.get((model, port), 0)

    def on_stopping(self, release: Callable[[int], None]) -> None:
        """`release(port)` is called, on the loop's thread, before a model on that port is stopped gracefully
        with no request in flight there (the gateway: Upstream.release_from_thread)."""
        self._before_stop.append(release)

    def stopping(self, model: str, port: int | None) -> None:
        """The loop is about to stop `model` gracefully: idle connections to it would hold llama-server's exit."""
        if not port or self.inflight_on(model, port):
            return
        for release in self._before_stop:
            release(port)

    def inflight_on(self, model: str, port: int) -> int:
        with self._lock:
            return self._on_port.get((model, port), 0)

    def unretire(self, model: str, port: int) -> None:
        """The retired port's container is gone: the engine may hand the port to a new one."""
        with self._lock:
            self._retired.discard((model, port))

    def forget(self, model: str) -> None:
        with self._lock:
            for d in (self._inflight, self._waiting, self._last_used, self._admitted):
                d.pop(model, None)
            self._draining.discard(model)
            self._retired = {k for k in self._retired if k[0] != model}
            self._on_port = {k: v for k, v in self._on_port.items() if k[0] != model}
