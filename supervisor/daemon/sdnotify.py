"""systemd's notify protocol by hand: datagrams to $NOTIFY_SOCKET (READY, WATCHDOG, STATUS, RELOADING, STOPPING).

A notify call never raises: a lost datagram must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

import structlog

from supervisor.control.api import Notifier, NullNotifier

log = structlog.get_logger(__name__)

_SEND_TIMEOUT_S = 1.0


def _address(notify_socket: str) -> str:
    # "@name" is Linux's abstract namespace: a leading NUL byte instead of a file.
    return "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket


class SdNotifier:
    """Sends state changes to the service manager listening on `notify_socket` (as in $NOTIFY_SOCKET)."""

    def __init__(self, notify_socket: str) -> None:
        if not notify_socket or not (notify_socket.startswith("/") or notify_socket.startswith("@")):
            raise ValueError(f"NOTIFY_SOCKET must be an absolute path or @abstract, not {notify_socket!r}")
        self.notify_socket = notify_socket
        self._address = _address(notify_socket)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """An SdNotifier when started by systemd with NOTIFY_SOCKET, else a NullNotifier."""
        env = os.environ if environ is None else environ
        notify_socket = env.get("NOTIFY_SOCKET", "")
        if not notify_socket:
            return NullNotifier()
        try:
            return cls(notify_socket)
        except ValueError as e:
            log.warning("ignoring NOTIFY_SOCKET", reason=str(e))
            return NullNotifier()

    def notify(self, message: str) -> bool:
        """Send one datagram of `KEY=value` lines; False (logged) when it could not be sent."""
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.settimeout(_SEND_TIMEOUT_S)  # a full queue must not hang the loop
                self._sock.sendto(message.encode(), self._address)
            except OSError as e:
                if not self._failing:  # once per outage, not once per watchdog ping
                    log.warning("sd_notify failed", socket=self.notify_socket, message=message.split("\n")[0],
                                error=str(e))
                self._failing = True
                return False
        if self._failing:
            log.info("sd_notify works again", socket=self.notify_socket)
            self._failing = False
        return True

    def ready(self) -> None:
        self.notify("READY=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify("STATUS=" + " ".join(text.splitlines()))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval_s(environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> float | None:
    """How often to send WATCHDOG=1: half of $WATCHDOG_USEC, or None when no watchdog is asked of us."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid if pid is not None else os.getpid()):
        return None  # meant for another process (we were exec'd or forked from it)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC", value=usec, reason="not an integer")
        return None
    return value / 2 / 1_000_000 if value > 0 else None
