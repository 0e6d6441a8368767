"""A container's process seen through a pidfd, so that a stop returns once the process is gone.

Docker's stop call returns only after the engine's teardown: the network endpoint, the port proxy, the
mounts. Measured on a 2-core host (SIGTERM to llama-server, 8 stops): the process was gone after 0.08 s,
the `die` event came at 0.11 s, and the stop call returned at 0.21 s. A model stopped to make room for
another only needs its process gone (its memory freed). The engine's teardown can run beside the next
model's start; DockerRuntime makes the next call on that same container wait for it.

The pidfd works only where the daemon shares the engine's pid namespace and may read the process's /proc
entry: the daemon on the engine's host as root. Under the shipped systemd unit the daemon has a user of its
own and `ProtectProc=invisible`, so the container's process is hidden from it. The process's cgroup must name
the container's full ID, read after the pidfd pins the process. Otherwise `open_process` returns None and
DockerRuntime.stop waits for the engine's `die` event instead (read from just before the signal, so it
cannot be missed): later than the pidfd, still before the stop call would return.
"""

from __future__ import annotations

import os
import select
from pathlib import Path

from supervisor.errors import RuntimeOperationError


def open_process(pid: int, container_id: str) -> int | None:
    """A pidfd for the container's main process, or None where it cannot be watched from here."""
    if pid <= 0 or len(container_id) != 64 or not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:            # gone already, or another pid namespace: the engine's stop decides
        return None
    try:
        ours = container_id in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        ours = False
    if not ours or gone(fd, 0):
        os.close(fd)
        return None
    return fd


def gone(pidfd: int, timeout_s: float) -> bool:
    """Whether the process exits within `timeout_s` (a pidfd turns readable when it does)."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    events = 0
    for _, ev in p.poll(max(0, round(timeout_s * 1000))):
        events |= ev
    if events & select.POLLNVAL:
        raise RuntimeOperationError(f"pidfd {pidfd} is not open: a stop cannot watch a closed descriptor")
    return bool(events & (select.POLLIN | select.POLLHUP))   # exited; HUP: reaped too (newer kernels)
