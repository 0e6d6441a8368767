"""The control socket: HTTP + JSON under /v1/ on a Unix socket, served from a daemon thread.

Each request runs in its own thread and talks to the daemon only through the
`Controller` protocol (snapshots and queued commands), never to its state.
"""

from __future__ import annotations

import dataclasses
import fcntl
import grp
import json
import os
import secrets
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


class _UnixHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer on an AF_UNIX socket that is already bound (see ControlServer.start)."""

    address_family = socket.AF_UNIX
    daemon_threads = True
    controller: Controller

    def server_bind(self) -> None:  # the socket is bound and put in place by ControlServer
        self.server_name = "llama-supervisor"
        self.server_port = 0


class _Handler(BaseHTTPRequestHandler):
    server: _UnixHTTPServer
    server_version = f"llama-supervisord/{__version__}"
    protocol_version = "HTTP/1.0"  # one request per connection; a response ends when the socket closes

    # --- plumbing --------------------------------------------------------------------------------

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
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise _BadRequest(f"request body over {_MAX_BODY} bytes")
        if not length:
            return {}
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as e:
            raise _BadRequest(f"request body is not JSON: {e}") from e
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
            handler(self)
        except _BadRequest as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except ControlError as e:
            self._error(HTTPStatus.NOT_FOUND, str(e))
        except (BrokenPipeError, ConnectionResetError):
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

    def get_status(self) -> None:
        names = tuple(self._query().get("name", ()))
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
        try:
            lines = int((query.get("lines") or ["100"])[0])
        except ValueError as e:
            raise _BadRequest("lines must be an integer") from e
        follow = (query.get("follow") or ["0"])[0] in ("1", "true", "yes")
        if not self.server.controller.status((name,)):
            self._error(HTTPStatus.NOT_FOUND, f"no such model: {name}", unknown=[name])
            return
        chunks = self.server.controller.logs(name, lines=lines, follow=follow)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
                self.wfile.flush()
        finally:
            _close(chunks)  # stop following the container log once the client has gone

    def _run(self, command: Command) -> None:
        # Waits as long as the loop takes (a start waits for RUNNING); the client sets the patience.
        result = self.server.controller.submit(command).result()
        status = HTTPStatus.NOT_FOUND if result.unknown else HTTPStatus.OK
        self._send_json(status, result_to_json(result))


_ROUTES = {
    ("GET", "version"): _Handler.get_version,
    ("GET", "pid"): _Handler.get_pid,
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
    return tuple(dict.fromkeys(names))


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise _BadRequest(f'"{key}" must be true or false')
    return value


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


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
    """

    def __init__(self, controller: Controller, path: Path, *, group: str | None = None, mode: int = 0o660) -> None:
        self.controller = controller
        self.path = Path(path)
        self.group = group
        self.mode = mode
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
