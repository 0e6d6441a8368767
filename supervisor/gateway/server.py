"""The gateway's server: uvicorn on its own thread and asyncio loop, on a socket bound up front.

The socket is bound in the caller's thread so that a taken port is a clear error at
daemon start (uvicorn, binding itself, would exit its thread instead). uvicorn never
installs signal handlers off the main thread: the daemon's own handlers keep them.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import structlog
import uvicorn

from supervisor.errors import ConfigError

log = structlog.get_logger("supervisor.gateway")


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8080', '[::1]:8080' or ':8080' (loopback) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--gateway-listen {value!r} is not HOST:PORT (fix: e.g. 127.0.0.1:8080)")
    return (host.strip("[]") or "127.0.0.1"), int(port)


class GatewayServer:
    def __init__(self, app: Any, listen: str) -> None:
        self.host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) on accepted connections
        # only when the socket says TCP, and uvicorn writes a response in pieces (headers, body, end),
        # so with Nagle on each later piece waits for the client's delayed ACK: 40 ms a request.
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # inherited by accepted sockets
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((self.host, port))
        except OSError as e:
            self._sock.close()
            raise ConfigError(f"gateway: cannot listen on {listen}: {e.strerror}"
                              " (fix: --gateway-listen HOST:PORT with a free port, or --no-gateway)") from e
        self._sock.listen(1024)
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_keep_alive=30,
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="gateway", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("gateway listening", url=f"http://{self.host}:{self.port}/v1")

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
