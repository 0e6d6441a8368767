"""Deaths seen through pidfds on one selector thread, as they happen, not polled."""

from __future__ import annotations

import os
from collections.abc import Callable

import structlog

from supervisor.runtime.process.selectorthread import SelectorThread

log = structlog.get_logger("supervisor.runtime.process")


class DeathWatch(SelectorThread[tuple[str, int]]):
    """One thread, one selector over pidfds: a process's exit is seen when it happens, not polled."""

    def __init__(self, on_exit: Callable[[str, int, int], None]) -> None:
        self._on_exit = on_exit                      # (record id, pid, pidfd)
        super().__init__("pidfd-watch")

    def watch(self, rid: str, pid: int, pidfd: int) -> None:
        self._add(pidfd, (rid, pid))

    def _readable(self, fd: int, data: tuple[str, int]) -> None:
        rid, pid = data
        self._forget(fd)
        try:
            self._on_exit(rid, pid, fd)
        except Exception as e:  # a failed record update must not stop the watch of the others
            log.error("exit handling failed", id=rid[:12], pid=pid, error=str(e))
        finally:
            os.close(fd)
