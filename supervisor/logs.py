"""structlog set-up: JSON lines to stdout off a terminal (journald), a console renderer on one.

Context is bound explicitly (`log.bind(model=...)` or keyword arguments):
contextvars do not cross the loop, prober and watcher threads.

Repeats are rate-limited, in structlog's chain and on the stdlib root handler (asyncio
and uvicorn log through `logging`): an attack that makes the daemon fail the same way
thousands of times a second (asyncio's "socket.accept() out of system resource" under
EMFILE) costs a few lines per window and one "log repeats suppressed" line, not the disk.

(`printable`, which makes text safe for a terminal, is in core/text.py: the CLI prints every
line through it, and must not pay for structlog's import to do so.)
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]

RATE_LIMIT_BURST = 5              # identical lines let through per window
RATE_LIMIT_WINDOW_S = 10.0
RATE_LIMIT_MAX_KEYS = 1024        # distinct lines tracked at once; the oldest window is closed early past this
# Two lines are "the same" when their level, event text and every field are equal: a repeated
# probe failure or accept error is limited; a new problem, file or reason is always logged.



@dataclass(frozen=True)
class Suppressed:
    """A window closed with `count` repeats dropped; `key` names what was repeated."""

    key: tuple[Hashable, ...]
    count: int
    window_s: float


class RateLimiter:
    """At most `burst` admissions per key in a window of `window_s` that begins at the key's first line.

    Pure but for the clock (injectable). Memory is bounded: at most `max_keys` keys; past that
    the oldest window is closed early. Windows close in the order they opened (the window length
    is constant), so closing them is amortised O(1). Thread-safe.
    """

    def __init__(self, *, burst: int = RATE_LIMIT_BURST, window_s: float = RATE_LIMIT_WINDOW_S,
                 max_keys: int = RATE_LIMIT_MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: OrderedDict[tuple[Hashable, ...], list[float]] = OrderedDict()   # key -> [start, seen]

    def admit(self, key: tuple[Hashable, ...]) -> tuple[bool, list[Suppressed]]:
        """(let this line through?, windows that closed with repeats dropped: report each once)."""
        now = self._clock()
        closed: list[Suppressed] = []
        with self._lock:
            while self._windows:
                first_key, (start, seen) = next(iter(self._windows.items()))
                if now - start < self.window_s and len(self._windows) < self.max_keys:
                    break
                if first_key == key and now - start < self.window_s:
                    break                      # full table, but this very key is the oldest: keep counting it
                del self._windows[first_key]
                if seen > self.burst:
                    closed.append(Suppressed(first_key, int(seen - self.burst), self.window_s))
            entry = self._windows.get(key)
            if entry is None:
                self._windows[key] = [now, 1]
                return True, closed
            entry[1] += 1
            return entry[1] <= self.burst, closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._windows)

    def flush(self) -> list[Suppressed]:
        """Close every window (at exit): the repeats still unreported."""
        with self._lock:
            out = [Suppressed(k, int(seen - self.burst), self.window_s)
                   for k, (_, seen) in self._windows.items() if seen > self.burst]
            self._windows.clear()
        return out


def _describe(s: Suppressed) -> dict[str, Any]:
    of = " ".join(str(p) for p in s.key if p)
    return {"repeats": s.count, "window_s": s.window_s, "of": of if len(of) <= 300 else of[:297] + "..."}


class RateLimitProcessor:
    """A structlog processor: drops a line beyond the limiter's burst (same level, event text and every field);
    reports each closed window that dropped lines as one "log repeats suppressed" line."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self._reporting = threading.local()

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if getattr(self._reporting, "active", False):
            return event_dict                 # our own report: never limited, never recursive
        # identical lines only: every field counts (a different problem, file or reason is news, not a repeat)
        key = (method, str(event_dict.get("event", "")),
               *(f"{k}={v}" for k, v in sorted(event_dict.items(), key=lambda kv: str(kv[0])) if k != "event"))
        ok, closed = self.limiter.admit(key)
        if closed:
            self._report(closed)
        if not ok:
            raise structlog.DropEvent
        return event_dict

    def _report(self, closed: list[Suppressed]) -> None:
        self._reporting.active = True
        try:
            for s in closed:
                structlog.get_logger("supervisor.logs").warning("log repeats suppressed", **_describe(s))
        finally:
            self._reporting.active = False


class RateLimitFilter(logging.Filter):
    """The same for stdlib logging (asyncio, uvicorn): key = level, logger name and the message template's first
    line (asyncio's exception handler puts the socket's repr on the lines after it)."""

    def __init__(self, limiter: RateLimiter) -> None:
        super().__init__()
        self.limiter = limiter
        self._reporting = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self._reporting, "active", False):
            return True
        ok, closed = self.limiter.admit((record.levelname, str(record.msg).split("\n", 1)[0][:200], record.name))
        if closed:
            self._reporting.active = True
            try:
                for s in closed:
                    logging.getLogger("supervisor.logs").warning(
                        "log repeats suppressed: %d repeats in %gs of %s", s.count, s.window_s, _describe(s)["of"])
            finally:
                self._reporting.active = False
        return ok


_HANDLER_NAME = "llama-supervisor-stderr"


def setup(fmt: LogFormat = "auto", *, level: int = logging.INFO,
          limiter: RateLimiter | None = None) -> RateLimiter:
    """Configure structlog (stdout) and the stdlib root handler (stderr, WARNING and up), both rate-limited."""
    limiter = RateLimiter() if limiter is None else limiter
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            RateLimitProcessor(limiter),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RateLimitFilter(limiter))
    root.addHandler(handler)
    return limiter
