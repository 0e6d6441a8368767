"""A model's log followed for one open Logs page, on a thread of its own: the runtime's follow
(the code `llama-supervisorctl logs -f` reads through), control characters stripped (core.text.printable),
and picked up again when the model's container changes (a restart) or its stream ends (a rotation or a stop).
Lines wait in a bounded buffer (the oldest dropped, and counted) until the page's stream takes them."""

from __future__ import annotations

import inspect
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from supervisor.core.status import ModelStatus
from supervisor.core.text import printable

MAX_LINE = 4096           # characters of a line kept
MAX_BUFFERED = 1000       # lines waiting for the page
_LIVE = frozenset({"STARTING", "RUNNING", "DRAINING", "STOPPING"})


class LogSource(Protocol):
    def status(self, names: tuple[str, ...] = ()) -> list[ModelStatus]: ...
    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]: ...


class LogFollower:
    def __init__(self, source: LogSource, model: str, wake: Callable[[], None], *, first_lines: int = 100,
                 retry_s: float = 1.0) -> None:
        self.source, self.model, self.wake = source, model, wake
        self.first_lines, self.retry_s = first_lines, retry_s
        self.dropped = 0
        self._lines: deque[str] = deque(maxlen=MAX_BUFFERED)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name=f"console-log-{model}", daemon=True)

    def start(self) -> LogFollower:
        self._thread.start()
        return self

    def take(self) -> list[str]:
        with self._lock:
            lines = list(self._lines)
            self._lines.clear()
        return lines

    def close(self) -> None:
        self._stop.set()
        stream = self._stream
        # the docker runtime's LogStream may be closed from any thread (it cuts a blocked read); a generator
        # may not: that thread ends with the container's next line or its stop
        if stream is not None and not inspect.isgenerator(stream) and hasattr(stream, "close"):
            stream.close()

    def _push(self, lines: list[str]) -> None:
        with self._lock:
            over = len(self._lines) + len(lines) - MAX_BUFFERED
            if over > 0:
                self.dropped += over
            self._lines.extend(lines)
        self.wake()

    def _run(self) -> None:
        seen: str | None = None
        lines = self.first_lines
        while not self._stop.is_set():
            found = self.source.status((self.model,))
            cid = found[0].container_id if found else None
            if cid is None or (cid == seen and found[0].state not in _LIVE):
                self._stop.wait(self.retry_s)     # nothing (new) to read until it runs again
                continue
            if seen is not None and cid != seen:
                self._push([f"--- {self.model}: a new container ({found[0].state}) ---"])
                lines = 100
            seen = cid
            try:
                self._stream = self.source.logs(self.model, lines=lines, follow=True)
                self._follow(self._stream)
            except Exception as e:  # noqa: BLE001 - an engine error ends this stream; try again in a second
                self._push([f"--- log unavailable: {printable(str(e))[:200]} ---"])
            self._stream = None
            lines = 0                     # the same container again: only what is new
            self._stop.wait(self.retry_s)

    def _follow(self, stream: Iterator[bytes]) -> None:
        partial = ""
        for chunk in stream:
            if self._stop.is_set():
                return
            text = partial + chunk.decode("utf-8", errors="replace")
            *whole, partial = text.split("\n")
            partial = partial[-MAX_LINE:]
            if whole:
                self._push([printable(line)[:MAX_LINE] for line in whole])
        if partial:
            self._push([printable(partial)[:MAX_LINE]])
