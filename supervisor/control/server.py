"""The control socket: HTTP + JSON under /v1/ on a Unix socket, served from a daemon thread.

Each request runs in its own thread and talks to the daemon only through the
`Controller` protocol (snapshots and queued commands), never to its state.

Every local user who can reach the socket is treated as possibly hostile: at
most MAX_CONNECTIONS at once (the rest get 503 at once), the whole request
(line, headers, body) must arrive within REQUEST_DEADLINE_S and each read
within READ_TIMEOUT_S, bodies are at most 64 KiB of JSON, names are checked
against the manifest name pattern before use, and anything malformed is a 400
with a JSON error, never a traceback. A `tail -f` stream ends as soon as its
client hangs up, not at the container's next log line, and followers have a
smaller cap of their own (a quarter of the connections): however many a user
opens, short requests (`status`) keep room.
"""

from __future__ import annotations

import dataclasses
import fcntl
import grp
import json
import os
import re
import secrets
import select
import socket
import stat
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from supervisor import __version__
from supervisor.paths import Locations
from supervisor.control.api import (
    API_VERSION,
    Command,
    CommandResult,
    Controller,
    Reload,
    Reread,
    RestartModels,
    Shutdown,
    StartModels,
    StopModels,
    Update,
)
from supervisor.errors import ControlError

log = structlog.get_logger(__name__)

_PREFIX = f"/{API_VERSION}/"
_MAX_BODY = 64 * 1024
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the trailing NUL
_PROBE_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 32
MAX_FOLLOWERS = MAX_CONNECTIONS // 4     # `tail -f` streams: long-lived, so capped apart (issue 15)
READ_TIMEOUT_S = 5.0           # one read of the request may wait this long
REQUEST_DEADLINE_S = 10.0      # the whole request must have arrived by then
WRITE_TIMEOUT_S = 60.0         # a `tail -f` reader that takes nothing for this long is dropped
MAX_LOG_LINES = 100_000
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")   # the manifest's name pattern (manifest.schema)
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
         b'{"error": "too many control connections; try again"}')


class _UnixHTTPServer(ThreadingHTTPServer):
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


class _Handler(BaseHTTPRequestHandler):
    server: _UnixHTTPServer
    server_version = f"llama-supervisord/{__version__}"
    protocol_version = "HTTP/1.0"  # one request per connection; a response ends when the socket closes
    timeout = READ_TIMEOUT_S       # StreamRequestHandler sets it on the socket: no read waits longer

    # --- plumbing --------------------------------------------------------------------------------

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s
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
        if not _is_count(raw):
            raise _BadRequest(f"Content-Length {raw[:20]!r} is not a byte count")
        length = int(raw)
        if length > _MAX_BODY:
            raise _BadRequest(f"request body over {_MAX_BODY} bytes")
        if not length:
            return {}
        data = self.rfile.read(length)
        if len(data) < length:
            raise _BadRequest(f"request body ended after {len(data)} of {length} bytes")
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as e:   # RecursionError: '[[[[...' nested past the limit
            raise _BadRequest(f"request body is not JSON: {str(e)[:200]}") from None
        if not isinstance(body, dict):
            raise _BadRequest("request body must be a JSON object")
        return body

    def _route(self, method: str) -> None:
        route = urlsplit(self.path).path
        if not route.startswith(_PREFIX):
            self._error(HTTPStatus.NOT_FOUND, f"unknown API path {route}; this daemon speaks {_PREFIX}")
            return
        endpoint = route[len(_PREFIX):]
        handler = _ROUTES.get((method, endpoint))
        if handler is None:
            allowed = [m for (m, e) in _ROUTES if e == endpoint]
            if allowed:
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{route} takes {', '.join(allowed)}")
            else:
                self._error(HTTPStatus.NOT_FOUND, f"unknown endpoint {route}")
            return
        try:
            if method == "POST":
                self._json_body = self._read_body()
            self._deadline.cancel()               # the request is in: what follows may take long
            handler(self)
        except _BadRequest as e:
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

    # --- endpoints ------------------------------------------------------------------------------

    def get_version(self) -> None:
        self._send_json(HTTPStatus.OK, {
            "api": API_VERSION, "version": __version__, "pid": self.server.controller.pid(),
        })

    def get_pid(self) -> None:
        self._send_json(HTTPStatus.OK, {"pid": self.server.controller.pid()})

    def get_paths(self) -> None:
        """Where this daemon keeps its lock, state, cache and manifests: `llama-supervisorctl` commands
        that work on local state (verify, hardware, fetch-model, ...) use the same ones."""
        self._send_json(HTTPStatus.OK, self.server.locations.to_json())

    def get_status(self) -> None:
        names = _checked_names(self._query().get("name", []), empty_ok=True)
        models = self.server.controller.status(names)
        known = {m.name for m in models}
        unknown = [n for n in dict.fromkeys(names) if n not in known]
        body: dict[str, Any] = {"models": [m.to_json() for m in models], "unknown": unknown}
        runtime = getattr(self.server.controller, "runtime", None)
        if runtime is not None:
            body["runtime"] = runtime()
        if unknown:
            body["error"] = f"no such model: {', '.join(unknown)}"
        self._send_json(HTTPStatus.NOT_FOUND if unknown else HTTPStatus.OK, body)

    def post_start(self) -> None:
        body = self._body()
        self._run(StartModels(_names(body), wait=_flag(body, "wait", True)))

    def post_stop(self) -> None:
        self._run(StopModels(_names(self._body())))

    def post_restart(self) -> None:
        body = self._body()
        self._run(RestartModels(_names(body), wait=_flag(body, "wait", True)))

    def post_reread(self) -> None:
        self._run(Reread())

    def post_update(self) -> None:
        self._run(Update())

    def post_reload(self) -> None:
        self._run(Reload())

    def post_shutdown(self) -> None:
        self._run(Shutdown(stop_models=_flag(self._body(), "stop_models", False)))

    def get_logs(self) -> None:
        query = self._query()
        name = (query.get("name") or [""])[0]
        if not name:
            raise _BadRequest("logs needs ?name=MODEL")
        _checked_names([name])
        raw_lines = (query.get("lines") or ["100"])[0]
        if not _is_count(raw_lines) or int(raw_lines) > MAX_LOG_LINES:
            raise _BadRequest(f"lines must be a whole number from 0 to {MAX_LOG_LINES}")
        lines = int(raw_lines)
        follow = (query.get("follow") or ["0"])[0] in ("1", "true", "yes")
        if not self.server.controller.status((name,)):
            self._error(HTTPStatus.NOT_FOUND, f"no such model: {name}", unknown=[name])
            return
        if not follow:
            self._send_log(self.server.controller.logs(name, lines=lines, follow=False), follow=False)
            return
        # A follower holds its connection for as long as it likes: without a cap of their own,
        # 32 `tail -f` filled every slot and `status` got 503 for as long as they stayed.
        if not self.server.followers.acquire(blocking=False):
            self._error(HTTPStatus.SERVICE_UNAVAILABLE,
                        f"too many log followers ({self.server.max_followers} 'tail -f' at once); "
                        "stop one, or read without -f")
            return
        try:
            self._send_log(self.server.controller.logs(name, lines=lines, follow=True), follow=True)
        finally:
            self.server.followers.release()

    def _send_log(self, chunks: Iterator[bytes], *, follow: bool) -> None:
        self.connection.settimeout(WRITE_TIMEOUT_S)
        done = threading.Event()
        if follow:
            threading.Thread(target=_close_on_hangup, args=(self.connection, chunks, done),
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
            _close(chunks)  # stop following the container log once the client has gone

    def _run(self, command: Command) -> None:
        # Waits as long as the loop takes (a start waits for RUNNING); the client sets the patience.
        result = self.server.controller.submit(command).result()
        status = HTTPStatus.NOT_FOUND if result.unknown else HTTPStatus.OK
        self._send_json(status, result_to_json(result))


_ROUTES = {
    ("GET", "version"): _Handler.get_version,
    ("GET", "pid"): _Handler.get_pid,
    ("GET", "paths"): _Handler.get_paths,
    ("GET", "status"): _Handler.get_status,
    ("GET", "logs"): _Handler.get_logs,
    ("POST", "start"): _Handler.post_start,
    ("POST", "stop"): _Handler.post_stop,
    ("POST", "restart"): _Handler.post_restart,
    ("POST", "reread"): _Handler.post_reread,
    ("POST", "update"): _Handler.post_update,
    ("POST", "reload"): _Handler.post_reload,
    ("POST", "shutdown"): _Handler.post_shutdown,
}


class _BadRequest(Exception):
    pass


def _names(body: dict[str, Any]) -> tuple[str, ...]:
    names = body.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise _BadRequest('"names" must be a non-empty list of model names (or ["all"])')
    return _checked_names(names)


def _is_count(text: str) -> bool:
    """Plain ASCII digits ('²'.isdigit() is True, but int('²') fails), at most 18 of them."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _checked_names(names: list[str], *, empty_ok: bool = False) -> tuple[str, ...]:
    """Names as the manifests allow them (or "all"), at most 1000, duplicates dropped; else 400."""
    if len(names) > 1000 or (not names and not empty_ok):
        raise _BadRequest("give from 1 to 1000 model names")
    for n in names:
        if n != "all" and not _NAME.match(n):
            shown = n if len(n) <= 70 else n[:67] + "..."
            raise _BadRequest(f"{shown!r} is not a model name (lowercase letters, digits and dashes, at most 63)")
    return tuple(dict.fromkeys(names))


def _close_on_hangup(conn: socket.socket, chunks: Iterator[bytes], done: threading.Event) -> None:
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
            _close(chunks)
            return
        done.wait(0.2)        # the client sent bytes after its request: ignore them, look again soon


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise _BadRequest(f'"{key}" must be true or false')
    return value


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        try:
            close()
        except ValueError:    # a generator busy in another thread cannot be closed from here
            pass


def result_to_json(result: CommandResult) -> dict[str, Any]:
    return dataclasses.asdict(result)


def probe_pid(path: Path, timeout: float = _PROBE_TIMEOUT_S) -> int | None:
    """The pid the daemon answering on `path` reports, or None when nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(f"GET {_PREFIX}pid HTTP/1.0\r\nHost: llama-supervisor\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return None
    _, _, body = data.partition(b"\r\n\r\n")
    try:
        pid = json.loads(body)["pid"]
    except (ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) else None


class ControlServer:
    """Serves `controller` on the Unix socket at `path` until `close()`.

    One daemon per socket: a lock file next to it (`control.sock.lock`, flock)
    is held for the server's life, and a socket that answers is never replaced.
    `locations` is what GET /v1/paths reports (default: this process's, from the environment).
    """

    def __init__(self, controller: Controller, path: Path, *, group: str | None = None, mode: int = 0o660,
                 max_connections: int = MAX_CONNECTIONS, read_timeout_s: float = READ_TIMEOUT_S,
                 request_deadline_s: float = REQUEST_DEADLINE_S, locations: Locations | None = None,
                 max_followers: int | None = None) -> None:
        self.controller = controller
        self.locations = locations or Locations.current()
        self.path = Path(path)
        self.group = group
        self.mode = mode
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self.request_deadline_s = request_deadline_s
        # followers get at most a quarter of the connections (and never all of them)
        self.max_followers = max(1, min(max_followers if max_followers is not None else max_connections // 4,
                                        max_connections - 1))
        self._httpd: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._inode: tuple[int, int] | None = None

    def start(self) -> None:
        """Bind, put the socket in place and serve; raises ControlError if another daemon holds the path."""
        if self._httpd is not None:
            return
        gid = self._gid()
        self._make_parent(gid)
        self._take_lock()
        try:
            self._remove_stale()
            sock = self._bind(gid)
        except BaseException:
            self._release_lock()
            raise
        address: Any = str(self.path)  # typeshed knows only AF_INET addresses
        httpd = _UnixHTTPServer(address, _Handler, bind_and_activate=False)
        httpd.socket.close()
        httpd.socket = sock
        httpd.controller = self.controller
        httpd.locations = self.locations
        httpd.slots = threading.BoundedSemaphore(self.max_connections)
        httpd.followers = threading.BoundedSemaphore(self.max_followers)
        httpd.max_followers = self.max_followers
        httpd.read_timeout_s = self.read_timeout_s
        httpd.request_deadline_s = self.request_deadline_s
        httpd.server_activate()  # listen() only now: before this, connects to the socket are refused
        self._httpd = httpd
        # serve_forever wakes every poll_interval only to check for shutdown():
        # at 0.1 s that alone was a third of the idle daemon's CPU time; 0.5 s
        # costs half a second at close.
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.5}, name="control-socket", daemon=True,
        )
        self._thread.start()
        log.info("control socket listening", path=str(self.path), mode=oct(self.mode), group=self.group)

    def close(self) -> None:
        """Stop serving, remove the socket (if it is still ours) and release the lock."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._release_lock()
        log.info("control socket closed", path=str(self.path))

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- steps of start() ----------------------------------------------------------------------

    def _gid(self) -> int | None:
        if self.group is None:
            return None
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError as e:
            raise ControlError(
                f"no group named {self.group!r} for the control socket: create it "
                f"(groupadd --system {self.group}) or drop the socket group setting"
            ) from e

    def _make_parent(self, gid: int | None) -> None:
        parent = self.path.parent
        if parent.is_dir():
            return  # systemd's RuntimeDirectory= or the operator made it: its mode is theirs
        try:
            parent.mkdir(parents=True, mode=0o750 if gid is not None else 0o755, exist_ok=True)
            if gid is not None:
                os.chown(parent, -1, gid)
        except OSError as e:
            raise ControlError(f"cannot create the control socket directory {parent}: {e}") from e

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ControlError(f"cannot open the control socket lock {lock_path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = probe_pid(self.path)
            who = f"pid {pid}" if pid is not None else f"the process holding {lock_path}"
            raise ControlError(f"another llama-supervisord ({who}) holds {self.path}") from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket: move it away or choose another --socket")
        pid = probe_pid(self.path)
        if pid is not None:  # a daemon without our lock (another mount namespace, an older version)
            raise ControlError(f"another llama-supervisord (pid {pid}) holds {self.path}")
        log.info("removing stale control socket", path=str(self.path), reason="nobody answers on it")
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ControlError(f"cannot remove the stale control socket {self.path}: {e}") from e

    def _bind(self, gid: int | None) -> socket.socket:
        # Bound under a temporary name, given its mode and group, then renamed into place; not
        # listening until start() activates it, so nobody can connect before the mode is right.
        # (No umask dance: umask is process-wide and other threads may be creating files.)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        if len(os.fsencode(tmp)) > _SUN_PATH_MAX:
            raise ControlError(f"control socket path too long for a Unix socket ({len(str(tmp))} bytes): {self.path}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            try:
                os.chmod(tmp, self.mode)
                if gid is not None:
                    os.chown(tmp, -1, gid)
                os.rename(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            st = os.lstat(self.path)
            self._inode = (st.st_dev, st.st_ino)
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot create the control socket {self.path}: {e}") from e
        except BaseException:
            sock.close()
            raise
        return sock
