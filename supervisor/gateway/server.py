"""The gateway's server: uvicorn on its own thread and asyncio loop, on a socket bound up front.

The socket is bound in the caller's thread so that a taken port is a clear error at
daemon start (uvicorn, binding itself, would exit its thread instead). uvicorn never
installs signal handlers off the main thread: the daemon's own handlers keep them.

The pieces that decide how connections are handled are named, not left to uvicorn's "auto":
the asyncio loop and the h11 protocol, subclassed in `supervisor.gateway.connections` for the
connection cap and the request-head deadline. asyncio accepts up to `backlog` connections in one
turn before any of them reaches the protocol (and the cap), so that batch is kept small
(`connections.accept_batch`) while the kernel's queue stays long (`LISTEN_BACKLOG`, set after uvicorn started).
Should accept() still fail for want of fds (EMFILE: something else in the daemon holds them), asyncio
stops accepting for 1 s and reports each failed accept: those reports are folded into one log
line a minute.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import uvicorn

from supervisor.errors import ConfigError
from supervisor.gateway.connections import (ConnectionLimits, ConnectionTable, accept_batch, connection_cap,
                                            protocol_class, soft_fd_limit)

log = structlog.get_logger("supervisor.gateway")

ACCEPT_BATCH = 64          # connections asyncio accepts in one loop turn at most (uvicorn's `backlog`)
LISTEN_BACKLOG = 2048      # the kernel's queue of connections not accepted yet


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8080', '[::1]:8080' or ':8080' (loopback) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--gateway-listen {value!r} is not HOST:PORT (fix: e.g. 127.0.0.1:8080)")
    return (host.strip("[]") or "127.0.0.1"), int(port)


class GatewayServer:
    """uvicorn on `listen`, bound here, or on `sock`: a listening socket inherited from systemd
    (socket activation; `supervisor.cli.listeners` checked that it is the one `listen` names).

    close() stops accepting at once and lets the requests in flight (streams included) finish,
    for `grace_s` at most; then it cuts what is left. Closing an inherited socket closes only this
    process's descriptor: the service manager holds another, so the kernel keeps queueing new
    connections for the next daemon instead of refusing them.
    """

    def __init__(self, app: Any, listen: str, limits: ConnectionLimits = ConnectionLimits(), *,
                 sock: socket.socket | None = None, grace_s: float = 5.0) -> None:
        self.host, port = parse_listen(listen)
        self.inherited = sock is not None
        self.grace_s = grace_s
        self.before_drain: list[Callable[[], None]] = []   # called first by close(): long-lived streams end
        self._sock = sock if sock is not None else _bind(self.host, port, listen)
        # Nagle off on accepted sockets (see _bind), also on an inherited socket, whatever its unit says.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.listen(LISTEN_BACKLOG)
        self.port = int(self._sock.getsockname()[1])
        fds = soft_fd_limit()
        self.connections = ConnectionTable(limits, connection_cap(limits.max_connections, fds))
        # timeout_graceful_shutdown is typed int, but uvicorn hands it to asyncio.wait_for: a float works
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_keep_alive=30,
                                timeout_graceful_shutdown=max(grace_s, 0.0),  # type: ignore[arg-type]
                                loop="asyncio", http=protocol_class(self.connections), backlog=accept_batch(ACCEPT_BATCH, fds))
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="gateway", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("gateway listening", url=f"http://{self.host}:{self.port}/v1", max_connections=self.connections.cap,
                 inherited=self.inherited)

    def close(self) -> None:
        """Stop accepting, wait for the requests in flight (up to grace_s), stop. Idempotent."""
        if not self._thread.is_alive():
            self._sock.close()
            return
        for before in self.before_drain:   # e.g. the console's event streams, which would never end
            try:
                before()
            except Exception as e:  # best effort: the drain goes on
                log.warning("before the drain", what=getattr(before, "__qualname__", repr(before)), error=str(e))
        in_flight = len(self._server.server_state.connections)
        log.info("gateway: not accepting; letting requests in flight finish", connections=in_flight,
                 grace_s=self.grace_s, socket="inherited: kept by the service manager" if self.inherited else "closed")
        t0 = time.monotonic()
        self._server.should_exit = True
        self._thread.join(self.grace_s + 5)
        self._sock.close()
        log.info("gateway stopped", waited_s=round(time.monotonic() - t0, 2))

    def cut(self) -> None:
        """Stop waiting for the requests in flight (a second SIGTERM or SIGINT): close() returns soon."""
        self._server.force_exit = True


def _bind(host: str, port: int, listen: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) on accepted connections
    # only when the socket says TCP, and uvicorn writes a response in pieces (headers, body, end),
    # so with Nagle on each later piece waits for the client's delayed ACK: 40 ms a request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"gateway: cannot listen on {listen}: {e.strerror}"
                          " (fix: --gateway-listen HOST:PORT with a free port, or --no-gateway)") from e
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, with the kernel's queue long again once asyncio listened with ACCEPT_BATCH,
    and the loop's reports of accept() failing for want of fds folded into one line a minute."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(_AcceptErrors().handle)
        await super().startup(sockets=sockets)
        for sock in sockets or []:
            sock.listen(LISTEN_BACKLOG)


class _AcceptErrors:
    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self.count = 0
        self.last = -every_s

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != "socket.accept() out of system resource":
            loop.default_exception_handler(context)
            return
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            exc = context.get("exception")
            log.error("gateway: accept() failed for want of file descriptors; not accepting for 1 s at a time",
                      error=str(exc), failures=self.count)
            self.count, self.last = 0, now
