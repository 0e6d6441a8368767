"""The gateway's connections: a cap below the fd limit, and a deadline for each request head.

1,100 connections that each sent half a request line once held every fd of the daemon (systemd's
1024 soft limit): /health, `ctl status`, Docker calls and the models' probes all failed. Now, in a
subclass of uvicorn's h11 protocol (pinned: `GatewayServer` passes it as `http=`):

- a connection must complete its request head within `header_timeout_s` of opening, or of the
  first byte of its next request on a kept-alive connection; else it is closed;
- at most `max_connections` are open. At the cap a new connection evicts the oldest one that is
  not inside a request (no complete head yet, or idle between requests), so idle and half-sent
  connections can never lock a real client out; only when every connection is inside a request is
  the newcomer answered 503 and closed, at once.

What was cut is logged as one line a minute at most, with counts: a flood must not grow the log.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger("supervisor.gateway")

_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_REFUSED_BODY = (b'{"error": {"message": "the gateway has every connection busy with a request; retry after 1s",'
                 b' "type": "server_error", "code": "connections_full"}}')
REFUSED = _REFUSED % (len(_REFUSED_BODY), _REFUSED_BODY)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024         # the option; the cap is also at most a quarter of the fd soft limit
    header_timeout_s: float = 10.0      # from accept (or a kept-alive request's first byte) to a complete head
    report_every_s: float = 60.0        # one log line at most this often about connections cut


def soft_fd_limit() -> int | None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else soft


def connection_cap(option: int, fd_limit: int | None) -> int:
    """min(option, fd limit // 4): each connection may hold a second fd upstream, and the daemon
    needs the rest (Docker, probes, the control socket, logs, accepts in flight)."""
    return max(1, option if fd_limit is None else min(option, fd_limit // 4))


def accept_batch(most: int, fd_limit: int | None) -> int:
    """How many connections asyncio may accept in one loop turn. They hold fds before the cap sees
    them, and those they evict are closed a turn later: up to two batches are held beyond the cap,
    so two batches get at most a quarter of the fds too."""
    return max(1, most if fd_limit is None else min(most, fd_limit // 8))


class ConnectionTable:
    """Every open gateway connection, oldest first; used on the gateway's loop only."""

    def __init__(self, limits: ConnectionLimits, cap: int) -> None:
        self.limits = limits
        self.cap = cap
        self.open: dict[GatewayProtocol, None] = {}     # insertion order: accept order
        self.cut: Counter[str] = Counter()              # since the last report
        self._reported = -limits.report_every_s      # the first cut is reported at once

    def admit(self, conn: GatewayProtocol) -> bool:
        """Make room for `conn` (evicting the oldest idle one) and add it; False: refuse it."""
        if len(self.open) >= self.cap:
            victim = next((c for c in self.open if not c.in_request), None)
            if victim is None:
                self.count("refused: every connection in a request")
                return False
            self.discard(victim)
            victim.cut()
            self.count("evicted at the cap: oldest not in a request")
        self.open[conn] = None
        return True

    def discard(self, conn: GatewayProtocol) -> None:
        self.open.pop(conn, None)

    def count(self, why: str) -> None:
        self.cut[why] += 1
        now = time.monotonic()
        if now - self._reported >= self.limits.report_every_s:
            log.warning("gateway connections cut", open=len(self.open), cap=self.cap,
                        **{k.split(":")[0].replace(" ", "_"): v for k, v in self.cut.items()})
            self.cut.clear()
            self._reported = now


class GatewayProtocol(H11Protocol):
    """uvicorn's h11 protocol with the table's cap and the head deadline (see the module docstring)."""

    table: ConnectionTable       # set on the class protocol_class() makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    @property
    def in_request(self) -> bool:
        """Its request head is complete and its response is not (the app is working on it)."""
        return self.cycle is not None and not self.cycle.response_complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.table.admit(self):
            transport.write(REFUSED)
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.discard(self)
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.in_request:
            self._disarm_head_timer()
        elif self._head_timer is None and not self.transport.is_closing():
            self._arm_head_timer()        # the first bytes of a kept-alive connection's next request

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Answered before its body was all read (413, 503): what is left is read and dropped, within
        # the head deadline, not for as long as the client cares to trickle.
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._arm_head_timer()

    def cut(self) -> None:
        """Close now (abort: nothing is owed to a connection not inside a request)."""
        self._disarm_head_timer()
        self.transport.abort()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.table.limits.header_timeout_s, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.in_request or self.transport.is_closing():
            return
        self.table.discard(self)
        self.table.count("header deadline: no complete request head in time")
        self.cut()


def protocol_class(table: ConnectionTable) -> type[GatewayProtocol]:
    """A GatewayProtocol class bound to `table` (uvicorn makes protocols from a class)."""
    return type("GatewayProtocol", (GatewayProtocol,), {"table": table})
