"""HTTP over the control socket: limits, request parsing, connection slots, log streams.

Every local user who can reach the socket is treated as possibly hostile: at
most MAX_CONNECTIONS at once (the rest get 503 at once), the whole request
(line, headers, body) must arrive within REQUEST_DEADLINE_S and each read
within READ_TIMEOUT_S, bodies are at most 64 KiB of JSON, and anything
malformed is a 400 with a JSON error, never a traceback. A `tail -f` stream
ends as soon as its client hangs up, not at the container's next log line, and
followers have a smaller cap of their own (a quarter of the connections):
however many a user opens, short requests (`status`) keep room. The endpoints
are in routes.py; the socket's life (lock, bind, mode) in server.py.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import structlog

from supervisor import __version__
from supervisor.control.api import API_VERSION, Controller
from supervisor.errors import ControlError
from supervisor.paths import Locations

log = structlog.get_logger("supervisor.control.server")

PREFIX = f"/{API_VERSION}/"
_MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 32
MAX_FOLLOWERS = MAX_CONNECTIONS // 4     # `tail -f` streams: long-lived, so capped apart (issue 15)
READ_TIMEOUT_S = 5.0           # one read of the request may wait this long
REQUEST_DEADLINE_S = 10.0      # the whole request must have arrived by then
WRITE_TIMEOUT_S = 60.0         # a `tail -f` reader that takes nothing for this long is dropped
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
         b'{"error": "too many control connections; try again"}')


class UnixHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer on an AF_UNIX socket that is already bound (see ControlServer.start)."""

    address_family = socket.AF_UNIX
    daemon_threads = True
    controller: Controller
    locations: Locations
    slots: threading.BoundedSemaphore
    followers: threading.BoundedSemaphore
    max_followers: int = MAX_FOLLOWERS
    read_timeout_s: float = READ_TIMEOUT_S
    request_deadline_s: float = REQUEST_DEADLINE_S

    def server_bind(self) -> None:  # the socket is bound and put in place by ControlServer
        self.server_name = "llama-supervisor"
        self.server_port = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        # One thread per connection, but never more than MAX_CONNECTIONS: a flood gets 503, not threads.
        if not self.slots.acquire(blocking=False):
            try:
                request.settimeout(0.5)
                request.sendall(_BUSY)
                request.shutdown(socket.SHUT_WR)
                request.recv(65536, socket.MSG_DONTWAIT)   # unread bytes at close would reset the 503 away
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class JsonHandler(BaseHTTPRequestHandler):
    """One request: read within the limits, routed by `routes` (method, endpoint) -> method name, answered in JSON."""

    server: UnixHTTPServer
    routes: ClassVar[dict[tuple[str, str], str]] = {}
    server_version = f"llama-supervisord/{__version__}"
    protocol_version = "HTTP/1.0"  # one request per connection; a response ends when the socket closes
    timeout = READ_TIMEOUT_S       # StreamRequestHandler sets it on the socket: no read waits longer

    # --- plumbing --------------------------------------------------------------------------------

    def setup(self) -> None:
        # typeshed makes StreamRequestHandler.timeout a ClassVar; socketserver reads self.timeout, so a per-instance value works.
        self.timeout = self.server.read_timeout_s  # type: ignore[misc]
        super().setup()
        # A client that trickles a byte every few seconds passes the read timeout; the deadline
        # ends it anyway: shutting the socket down makes the pending read return at once.
        self._deadline = threading.Timer(self.server.request_deadline_s, self._too_slow)
        self._deadline.daemon = True
        self._deadline.start()
        self._json_body: dict[str, Any] | None = None

    def _too_slow(self) -> None:
        log.info("control client too slow; closing", deadline_s=self.server.request_deadline_s)
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        self._deadline.cancel()
        try:
            super().finish()
        except OSError:
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, headers too long, unknown method) as JSON too."""
        self.close_connection = True
        self.request_version = "HTTP/1.0"   # a garbled request line left 0.9, which gets no status line
        try:
            self._send_json(code, {"error": message or HTTPStatus(code).phrase})
        except OSError:
            pass

    def address_string(self) -> str:  # AF_UNIX peers have no address
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control request", line=format % args)

    def _send_json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, **extra: object) -> None:
        self._send_json(status, {"error": message, **extra})

    def _query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    def _body(self) -> dict[str, Any]:
        return self._json_body or {}

    def _read_body(self) -> dict[str, Any]:
        raw = (self.headers.get("Content-Length") or "0").strip()
        if not is_count(raw):
            raise BadRequest(f"Content-Length {raw[:20]!r} is not a byte count")
        length = int(raw)
        if length > _MAX_BODY:
            raise BadRequest(f"request body over {_MAX_BODY} bytes")
        if not length:
            return {}
        data = self.rfile.read(length)
        if len(data) < length:
            raise BadRequest(f"request body ended after {len(data)} of {length} bytes")
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as e:   # RecursionError: '[[[[...' nested past the limit
            raise BadRequest(f"request body is not JSON: {str(e)[:200]}") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    def _route(self, method: str) -> None:
        route = urlsplit(self.path).path
        if not route.startswith(PREFIX):
            self._error(HTTPStatus.NOT_FOUND, f"unknown API path {route}; this daemon speaks {PREFIX}")
            return
        endpoint = route[len(PREFIX):]
        handler = self.routes.get((method, endpoint))
        if handler is None:
            allowed = [m for (m, e) in self.routes if e == endpoint]
            if allowed:
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{route} takes {', '.join(allowed)}")
            else:
                self._error(HTTPStatus.NOT_FOUND, f"unknown endpoint {route}")
            return
        try:
            if method == "POST":
                self._json_body = self._read_body()
            self._deadline.cancel()               # the request is in: what follows may take long
            getattr(self, handler)()
        except BadRequest as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except ControlError as e:
            self._error(HTTPStatus.NOT_FOUND, str(e))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("control client went away", endpoint=endpoint)
        except Exception as e:  # one bad request must not take the server down
            log.exception("control request failed", endpoint=endpoint)
            try:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")
            except OSError:
                pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _send_log(self, chunks: Iterator[bytes], *, follow: bool) -> None:
        self.connection.settimeout(WRITE_TIMEOUT_S)
        done = threading.Event()
        if follow:
            threading.Thread(target=close_on_hangup, args=(self.connection, chunks, done),
                             name="control-tail-hangup", daemon=True).start()
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            for chunk in chunks:
                self.wfile.write(chunk)
                self.wfile.flush()
        finally:
            done.set()
            close_stream(chunks)  # stop following the container log once the client has gone


class BadRequest(Exception):
    """A malformed request: answered 400 with its message."""


def is_count(text: str) -> bool:
    """Plain ASCII digits ('²'.isdigit() is True, but int('²') fails), at most 18 of them."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def close_on_hangup(conn: socket.socket, chunks: Iterator[bytes], done: threading.Event) -> None:
    """Close a followed log as soon as the client hangs up, without waiting for the next log line.

    The client sends nothing after its request (HTTP/1.0), so the socket turning
    readable means it closed (recv peeks b"") or reset; either way the stream is
    closed, which ends the handler's blocked read of the container log.
    """
    poller = select.poll()
    poller.register(conn, select.POLLIN | select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0))
    while not done.is_set():
        try:
            events = poller.poll(1000)
        except (OSError, ValueError):
            return
        if not events or done.is_set():
            continue
        try:
            gone = conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            gone = False
        except OSError:
            gone = True
        if gone or any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events):
            log.debug("tail client hung up; closing the log stream")
            close_stream(chunks)
            return
        done.wait(0.2)        # the client sent bytes after its request: ignore them, look again soon


def close_stream(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        try:
            close()
        except ValueError:    # a generator busy in another thread cannot be closed from here
            pass
