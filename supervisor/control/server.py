"""The control socket: HTTP + JSON under /v1/ on a Unix socket, served from a daemon thread.

This module owns the socket's life: one daemon per socket (a flock'd lock file), a
socket that answers is never replaced, a stale one is removed, and the socket is
bound under a temporary name, given its mode and group, and renamed into place
before it listens. Under socket activation the socket is systemd's (`inherited`): it is checked
(its path, no access for others, its group) instead of made, and never removed. Each request runs in its own thread (http.py: limits, parsing,
slots, followers) and is answered by routes.py, which talks to the daemon only
through the `Controller` protocol (snapshots and queued commands), never to its state.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import secrets
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import structlog

from supervisor.control.api import Controller
from supervisor.control.http import (
    MAX_CONNECTIONS,
    PREFIX,
    READ_TIMEOUT_S,
    REQUEST_DEADLINE_S,
    UnixHTTPServer,
)
from supervisor.control.routes import Handler
from supervisor.errors import ControlError
from supervisor.paths import Locations

log = structlog.get_logger(__name__)

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the trailing NUL
_PROBE_TIMEOUT_S = 2.0


def probe_pid(path: Path, timeout: float = _PROBE_TIMEOUT_S) -> int | None:
    """The pid the daemon answering on `path` reports, or None when nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(f"GET {PREFIX}pid HTTP/1.0\r\nHost: llama-supervisor\r\n\r\n".encode())
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
                 max_followers: int | None = None, inherited: socket.socket | None = None) -> None:
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
        self._httpd: UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self.inherited = inherited      # a listening AF_UNIX socket from the service manager, or None

    def start(self) -> None:
        """Bind, put the socket in place and serve; raises ControlError if another daemon holds the path."""
        if self._httpd is not None:
            return
        gid = self._gid()
        if self.inherited is None:
            self._make_parent(gid)
        self._take_lock()
        try:
            if self.inherited is not None:
                sock = self._check_inherited(self.inherited, gid)
            else:
                self._remove_stale()
                sock = self._bind(gid)
        except BaseException:
            self._release_lock()
            raise
        address: Any = str(self.path)  # typeshed knows only AF_INET addresses
        httpd = UnixHTTPServer(address, Handler, bind_and_activate=False)
        httpd.socket.close()
        httpd.socket = sock
        httpd.controller = self.controller
        httpd.locations = self.locations
        httpd.slots = threading.BoundedSemaphore(self.max_connections)
        httpd.followers = threading.BoundedSemaphore(self.max_followers)
        httpd.max_followers = self.max_followers
        httpd.read_timeout_s = self.read_timeout_s
        httpd.request_deadline_s = self.request_deadline_s
        if self.inherited is None:
            httpd.server_activate()  # listen() only now: before this, connects to the socket are refused
        # (an inherited socket listens already, with the backlog its unit gave it: left as it is)
        self._httpd = httpd
        # serve_forever wakes every poll_interval only to check for shutdown():
        # at 0.1 s that alone was a third of the idle daemon's CPU time; 0.5 s
        # costs half a second at close.
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.5}, name="control-socket", daemon=True,
        )
        self._thread.start()
        log.info("control socket listening", path=str(self.path), mode=oct(self.mode), group=self.group,
                 inherited=self.inherited is not None)

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

    def _check_inherited(self, sock: socket.socket, gid: int | None) -> socket.socket:
        """The service manager's socket, if it is the one at self.path and no wider open than ours would be.

        The guarantees of _bind, checked instead of made: the path is a socket that others may not
        write to (connecting takes write access: 0660 and systemd-socket-activate's 0644 pass, 0666 not),
        and its group is --socket-group when one is given. (The directory is the unit's RuntimeDirectory=, as for a socket the daemon makes.)
        """
        name = sock.getsockname()
        where = f"inherited control socket (LISTEN_FDNAMES 'control', bound to {name!r})"
        if sock.family != socket.AF_UNIX or not isinstance(name, str) or not name.startswith("/"):
            raise ControlError(f"the {where} is not a Unix socket with a path"
                               f" (fix: ListenStream={self.path} in its .socket unit)")
        if os.path.abspath(name) != os.path.abspath(self.path):
            raise ControlError(f"the {where} is not {self.path}, the control socket this daemon serves"
                               f" (fix: the same path in ListenStream= and LLAMA_SUPERVISOR_SOCKET or --socket)")
        try:
            st = os.lstat(self.path)
        except OSError as e:
            raise ControlError(f"the {where}: cannot stat {self.path}: {e.strerror}") from e
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"the {where}: {self.path} is not a socket any more (fix: restart its .socket unit)")
        if st.st_mode & 0o002:      # connecting to a Unix socket takes write access to it, nothing else
            raise ControlError(f"the {where} has mode {stat.S_IMODE(st.st_mode):04o}: anyone could use it"
                               f" (fix: SocketMode={self.mode:04o} in its .socket unit)")
        if gid is not None and st.st_gid != gid:
            raise ControlError(f"the {where} has group id {st.st_gid}, not {self.group}"
                               f" (fix: SocketGroup={self.group} in its .socket unit)")
        return sock

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
