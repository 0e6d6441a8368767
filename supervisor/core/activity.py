"""The gateway's recent requests, for the console's Activity page: a bounded ring, no I/O.

The gateway (gateway/activity.py) calls `begin` when an inference request arrives and `end` when its
answer is over; the console reads `snapshot`. Memory is bounded twice: the ring keeps the last `size`
finished requests, and at most `max_inflight` requests are tracked while in flight (beyond that a
request is counted in `untracked`, never stored). `version` grows on every change, so a reader can
tell at no cost whether anything happened since it last looked.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

TAIL_BYTES = 4096        # the end of an answer kept to read its token count


@dataclass(frozen=True)
class Request:
    id: int
    started: float                    # wall clock (time.time), shown to people
    model: str
    path: str
    status: int = 0                   # 0 while in flight; 499 when the client went away first
    queue_wait_s: float | None = None  # time waiting for the model to be ready
    ttft_s: float | None = None       # first answer byte after the request arrived (streams)
    tokens: int | None = None         # generated tokens, as the model reported them
    duration_s: float | None = None
    client_gone: bool = False
    streamed: bool = False            # a server-sent-events answer: its first byte is its first token

    @property
    def tokens_per_s(self) -> float | None:
        """Generated tokens over the time spent generating: a stream's duration less its time to first token;
        an answer in one piece has no first token apart from its end, so its whole duration."""
        if self.tokens is None or self.duration_s is None:
            return None
        busy = self.duration_s - (self.ttft_s or 0.0) if self.streamed else self.duration_s
        return self.tokens / busy if busy > 0 else None

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "started": self.started, "model": self.model, "path": self.path,
                "status": self.status, "queue_wait_s": self.queue_wait_s, "ttft_s": self.ttft_s,
                "tokens": self.tokens, "tokens_per_s": self.tokens_per_s, "duration_s": self.duration_s,
                "client_gone": self.client_gone, "in_flight": self.duration_s is None, "streamed": self.streamed}


class Activity:
    def __init__(self, size: int = 200, max_inflight: int = 256, wake: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._done: deque[Request] = deque(maxlen=size)
        self._inflight: dict[int, Request] = {}
        self._max_inflight = max_inflight
        self._next = 0
        self.version = 0
        self.untracked = 0           # requests not tracked: max_inflight were in flight already
        self.wake = wake             # tells readers to look again (the console sets it: its event stream)

    def begin(self, started: float, model: str, path: str) -> int | None:
        """Track a request in flight; its id, or None when max_inflight are tracked already."""
        with self._lock:
            if len(self._inflight) >= self._max_inflight:
                self.untracked += 1
                return None
            self._next += 1
            self._inflight[self._next] = Request(self._next, started, model, path)
            self.version += 1
        self.wake()
        return self._next

    def update(self, rid: int | None, **fields: object) -> None:
        """Fields learnt while in flight (model, queue wait, time to first token)."""
        if rid is None:
            return
        with self._lock:
            r = self._inflight.get(rid)
            if r is not None:
                self._inflight[rid] = replace(r, **fields)  # type: ignore[arg-type]
                self.version += 1
        self.wake()

    def end(self, rid: int | None, *, status: int, duration_s: float, tokens: int | None,
            client_gone: bool) -> None:
        if rid is None:
            return
        with self._lock:
            r = self._inflight.pop(rid, None)
            if r is None:
                return
            self._done.append(replace(r, status=status, duration_s=duration_s, tokens=tokens,
                                      client_gone=client_gone))
            self.version += 1
        self.wake()

    def snapshot(self) -> tuple[tuple[Request, ...], tuple[Request, ...]]:
        """(in flight, oldest first; finished, newest first)."""
        with self._lock:
            return tuple(self._inflight.values()), tuple(reversed(self._done))


_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d{1,9})')
_PREDICTED = re.compile(rb'"predicted_n"\s*:\s*(\d{1,9})')


def tokens_from_tail(tail: bytes) -> int | None:
    """The generated token count an OpenAI answer (its `usage`) or llama-server's (`timings`) ends with;
    the last one in a stream. None when the tail has neither."""
    for pattern in (_COMPLETION, _PREDICTED):
        found = pattern.findall(tail)
        if found:
            return int(found[-1])
    return None
