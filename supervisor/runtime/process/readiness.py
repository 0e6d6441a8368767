"""llama-server says when it has loaded: the router's child protocol, read on one selector thread.

llama.cpp's router starts each model as a child `llama-server` with LLAMA_SERVER_ROUTER_PORT in
its environment (tools/server/server-models.cpp, `server_child`). Such a child keeps its stdout
for state lines, one JSON object each after a fixed prefix, and logs to stderr:

    cmd_child_to_router:state:{"state":"loading","payload":{...}}     (while loading, every 0.2 s)
    cmd_child_to_router:state:{"state":"ready","payload":{...}}       (/health answers 200 from now)

It reads its stdin for `cmd_router_to_child:exit` (a graceful exit) and exits at once, with
status 1, on EOF there. The process runtime launches every server this way (launcher.py):

- stdout is a pipe whose read end this module watches: a "ready" line is posted to the loop as
  ContainerEvent(READY), which probes the model at once instead of at its next probe (lifecycle.py);
- stdin is a FIFO under the runtime's state dir that the server holds open for reading and writing,
  so it never sees EOF (a daemon restart does not end it), and any later daemon can write the exit
  command to it: `ask_exit`. A server that has loaded waits for that command as well as for SIGTERM
  before it exits, so a stop writes it before the SIGTERM.

The lines come from the verified binary the daemon started, but are still read as untrusted input:
one line is at most MAX_LINE bytes (a longer one is dropped whole), only the "ready" state is acted
on, and anything else is ignored. After a daemon restart the pipe's reader is gone: the server
ignores SIGPIPE, its later state lines fail with EPIPE, and an adopted server is probed as before.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import structlog

from supervisor.runtime.process.selectorthread import SelectorThread

log = structlog.get_logger("supervisor.runtime.process")

CHILD_ENV = "LLAMA_SERVER_ROUTER_PORT"   # set: child mode; its value is not read by the pinned llama-server
STATE_PREFIX = b"cmd_child_to_router:state:"
EXIT_COMMAND = b"cmd_router_to_child:exit\n"
MAX_LINE = 64 * 1024                     # a "ready" line carries the model's metadata: a few KB


def state_of(line: bytes) -> str | None:
    """The state a child's stdout line reports ("loading", "ready", ...), None for any other line."""
    if not line.startswith(STATE_PREFIX):
        return None
    try:
        data = json.loads(line[len(STATE_PREFIX):])
    except ValueError:
        return None
    state = data.get("state") if isinstance(data, dict) else None
    return state if isinstance(state, str) else None


class Lines:
    """Bytes read from a pipe, split into complete lines of at most `limit` bytes (longer ones dropped)."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._dropping = False                 # inside a line already longer than the limit

    def feed(self, block: bytes) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        while (nl := block.find(b"\n", start)) >= 0:
            if not self._dropping and len(self._buf) + nl - start <= self.limit:
                self._buf += block[start:nl]
                out.append(bytes(self._buf))
            self._buf.clear()
            self._dropping = False
            start = nl + 1
        rest = block[start:]
        if self._dropping or len(self._buf) + len(rest) > self.limit:
            self._buf.clear()
            self._dropping = True
        else:
            self._buf += rest
        return out


class ReadyWatch(SelectorThread[tuple[str, int, Lines]]):
    """One thread, one selector over the servers' stdout pipes; calls `on_ready(record id, pid)` per "ready"
    line."""

    def __init__(self, on_ready: Callable[[str, int], None]) -> None:
        self._on_ready = on_ready
        super().__init__("ready-watch")

    def watch(self, rid: str, pid: int, fd: int) -> None:
        """Read `fd` (this watch closes it at EOF), the stdout of server `pid` of record `rid`."""
        os.set_blocking(fd, False)
        self._add(fd, (rid, pid, Lines()))

    def _readable(self, fd: int, data: tuple[str, int, Lines]) -> None:
        rid, pid, lines = data
        try:
            block = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("a server's state pipe failed; it is probed as before", id=rid[:12], error=str(e))
            block = b""
        if not block:                      # the server exited (or closed its stdout)
            self._forget(fd)
            os.close(fd)
            return
        for line in lines.feed(block):
            if state_of(line) == "ready":
                try:
                    self._on_ready(rid, pid)
                except Exception as e:  # a failed post must not stop the watch of the others
                    log.error("ready handling failed", id=rid[:12], error=str(e))

    def _left(self, fd: int, data: tuple[str, int, Lines]) -> None:
        os.close(fd)


def make_fifo(path: Path) -> int:
    """A new FIFO at `path` (any old one replaced), opened for reading and writing: the server's stdin.

    Opened O_RDWR (Linux defines it for a FIFO), the server holds a writer itself, so its stdin never
    reaches EOF; the caller hands the descriptor over and closes its own."""
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def ask_exit(path: Path) -> bool:
    """Write the exit command to a server's stdin FIFO; False when there is none or no server reads it."""
    try:
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENXIO):     # ENXIO: nobody has it open for reading
            log.warning("could not open a server's stdin FIFO", path=str(path), error=str(e))
        return False
    try:
        os.write(fd, EXIT_COMMAND)
        return True
    except OSError as e:                                   # EAGAIN: 64 KiB unread in it; EPIPE: gone
        log.warning("could not write the exit command to a server's stdin", path=str(path), error=str(e))
        return False
    finally:
        os.close(fd)
