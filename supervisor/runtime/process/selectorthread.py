"""One thread, one selector over descriptors handed to it from any thread: what the death watch (pidfds)
and the ready watch (the servers' stdout pipes) share."""

from __future__ import annotations

import os
import selectors
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class SelectorThread(Generic[T]):
    """Descriptors are added from any thread (`_add`, with what the subclass needs to know of each); each one
    that turns readable goes to `_readable` on this thread. A wake pipe lets `_add` and `close` interrupt the
    select. A subclass unregisters (`_forget`) what it is done with; `close` hands it what is left (`_left`)."""

    def __init__(self, name: str) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: list[tuple[int, T]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _add(self, fd: int, data: T) -> None:
        with self._lock:
            self._pending.append((fd, data))
        os.write(self._wake_w, b"x")

    def _readable(self, fd: int, data: T) -> None:
        raise NotImplementedError

    def _left(self, fd: int, data: T) -> None:
        """At `close`, for each descriptor still watched (default: nothing; its owner closes it)."""

    def _forget(self, fd: int) -> None:
        self._sel.unregister(fd)

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        if not self._thread.is_alive():
            for key in list(self._sel.get_map().values()):
                if key.data is not None:
                    self._left(key.fd, key.data[0])
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select():
                if key.data is None:
                    self._take_pending()
                else:
                    self._readable(key.fd, key.data[0])

    def _take_pending(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        with self._lock:
            pending, self._pending = self._pending, []
        for fd, data in pending:
            self._sel.register(fd, selectors.EVENT_READ, (data,))     # a 1-tuple: never None, the wake pipe's
