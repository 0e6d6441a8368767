"""Deaths seen through pidfds on one selector thread, as they happen, not polled."""

from __future__ import annotations

import os
import selectors
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("supervisor.runtime.process")


class DeathWatch:
    """One thread, one selector over pidfds: a process's exit is seen when it happens, not polled."""

    def __init__(self, on_exit: Callable[[str, int, int], None]) -> None:
        self._on_exit = on_exit                      # (record id, pid, pidfd)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: list[tuple[int, str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pidfd-watch", daemon=True)
        self._thread.start()

    def watch(self, rid: str, pid: int, pidfd: int) -> None:
        with self._lock:
            self._pending.append((pidfd, rid, pid))
        os.write(self._wake_w, b"x")

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        if not self._thread.is_alive():
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select():
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    with self._lock:
                        pending, self._pending = self._pending, []
                    for fd, rid, pid in pending:
                        self._sel.register(fd, selectors.EVENT_READ, (rid, pid))
                    continue
                rid, pid = key.data
                self._sel.unregister(key.fd)
                try:
                    self._on_exit(rid, pid, key.fd)
                except Exception as e:  # a failed record update must not stop the watch of the others
                    log.error("exit handling failed", id=rid[:12], pid=pid, error=str(e))
                finally:
                    os.close(key.fd)


