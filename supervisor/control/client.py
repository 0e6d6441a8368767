"""The control socket's client: one method per /v1/ endpoint, HTTP/1.0 over the Unix socket.

The server is ours and speaks plain HTTP/1.0 (one request per connection, the
reply ends when it closes), so the client writes the request and reads the
reply on a bare socket. `llama-supervisorctl status` runs in a new process
every time: importing httpx took 75 ms, and http.client (with the email
package it parses headers with) 20 ms, of a 150 ms budget (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from supervisor.control.api import API_VERSION, CommandResult, ModelResult
from supervisor.core.status import ModelStatus
from supervisor.errors import ControlError
from supervisor.paths import Locations

START_HINT = "start it with 'systemctl start llama-supervisor' or 'make run'"
_PREFIX = f"/{API_VERSION}"


@dataclass(frozen=True)
class StatusReply:
    models: tuple[ModelStatus, ...]
    unknown: tuple[str, ...] = ()
    runtime: str = ""                   # docker | process (empty from a daemon that does not say)


def model_status_from_json(data: dict[str, Any]) -> ModelStatus:
    return ModelStatus.from_json(data)


def command_result_from_json(data: dict[str, Any]) -> CommandResult:
    return CommandResult(
        ok=bool(data["ok"]),
        results=tuple(ModelResult(r["name"], bool(r["ok"]), r["message"]) for r in data.get("results", ())),
        error=data.get("error"),
        unknown=tuple(data.get("unknown", ())),
    )


_MAX_HEAD = 64 * 1024


class _Conn:
    """One request on its own connection; `status` and `head_rest` once the headers are in."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.path = path
        self.status = 0
        self.rest = b""

    def send(self, method: str, url: str, body: bytes | None) -> None:
        self.sock.connect(str(self.path))
        head = f"{method} {url} HTTP/1.0\r\nHost: llama-supervisor\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + (body or b""))

    def read_head(self) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise _Lost("the daemon closed the connection before its reply")
            buf += chunk
            if len(buf) > _MAX_HEAD:
                raise ControlError("the daemon's reply headers are too long")
        head, _, self.rest = buf.partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ControlError(f"the socket at {self.path} does not answer like llama-supervisord: {head[:80]!r}")
        self.status = int(parts[1])

    def chunks(self) -> Iterator[bytes]:
        if self.rest:
            yield self.rest
        while chunk := self.sock.recv(65536):
            yield chunk

    def close(self) -> None:
        self.sock.close()


class _Lost(Exception):
    """The daemon closed or reset the connection before a whole reply (a shutdown may do that)."""


@dataclass
class _Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class ControlClient:
    """Talks to llama-supervisord on the socket at `path`; every failure is a ControlError."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._timeout = timeout

    def close(self) -> None:
        pass    # one connection per request (the server speaks HTTP/1.0): nothing is kept open

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- queries --------------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/version"))

    def pid(self) -> int:
        return int(self._json(self._request("GET", "/pid"))["pid"])

    def locations(self) -> Locations:
        """Where the daemon keeps its lock, state, cache and manifests (GET /v1/paths)."""
        body = self._json(self._request("GET", "/paths"))
        try:
            return Locations(*(Path(_text(body, key)) for key in ("state_dir", "cache_dir", "lock", "manifests")))
        except ValueError as e:
            raise ControlError(f"the daemon on {self.path} sent paths that are not usable: {e}") from None

    def console_url(self) -> str:
        """The web console's login URL (GET /v1/console): whoever may use this socket may act there."""
        url = self._json(self._request("GET", "/console")).get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ControlError(f"the daemon on {self.path} sent a console URL that is not one: {str(url)[:80]!r}")
        return url

    def status(self, names: Sequence[str] = ()) -> StatusReply:
        response = self._request("GET", "/status", params=[("name", n) for n in names], accept=(404,))
        body = self._json(response)
        return StatusReply(
            models=tuple(model_status_from_json(m) for m in body.get("models", ())),
            unknown=tuple(body.get("unknown", ())),
            runtime=str(body.get("runtime", "")),
        )

    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        """The model container's log, as it comes; with follow, until the caller stops iterating."""
        params = [("name", name), ("lines", str(lines)), ("follow", "1" if follow else "0")]
        conn = self._open("GET", "/logs", params=params, body=None, read_timeout=None if follow else self._timeout)
        try:
            if conn.status != 200:
                self._raise_for(_Reply(conn.status, self._read_all(conn)))
            try:
                yield from conn.chunks()
            except OSError as e:
                raise self._transport_error(e) from e
        finally:
            conn.close()

    # --- commands -------------------------------------------------------------------------------

    def start(self, names: Sequence[str], *, wait: bool = True) -> CommandResult:
        return self._command("/start", {"names": list(names), "wait": wait}, long=wait)

    def stop(self, names: Sequence[str]) -> CommandResult:
        return self._command("/stop", {"names": list(names)}, long=True)

    def restart(self, names: Sequence[str], *, wait: bool = True) -> CommandResult:
        return self._command("/restart", {"names": list(names), "wait": wait}, long=True)

    def unload(self, names: Sequence[str]) -> CommandResult:
        return self._command("/unload", {"names": list(names)}, long=True)

    def reread(self) -> CommandResult:
        return self._command("/reread", {}, long=True)

    def update(self) -> CommandResult:
        return self._command("/update", {}, long=True)

    def reload(self) -> CommandResult:
        return self._command("/reload", {}, long=True)

    def shutdown(self, *, stop_models: bool = False) -> CommandResult:
        try:
            return self._command("/shutdown", {"stop_models": stop_models}, long=True)
        except ControlError as e:
            # The daemon may close the socket as it exits, before or while answering.
            if isinstance(e.__cause__, _Lost):
                return CommandResult(ok=True)
            raise

    # --- plumbing -------------------------------------------------------------------------------

    def _command(self, endpoint: str, body: dict[str, Any], *, long: bool) -> CommandResult:
        # Commands that wait for the loop (a start waits for RUNNING) get no read timeout.
        response = self._request("POST", endpoint, body=body, accept=(404,), long=long)
        data = self._json(response)
        if "ok" not in data:
            self._raise_for(response)
        return command_result_from_json(data)

    def _open(self, method: str, endpoint: str, *, params: Sequence[tuple[str, str]] | None,
              body: dict[str, Any] | None, read_timeout: float | None) -> _Conn:
        url = _PREFIX + endpoint + (f"?{urlencode(params)}" if params else "")
        conn = _Conn(self.path, self._timeout)
        try:
            conn.send(method, url, json.dumps(body).encode() if body is not None else None)
            conn.sock.settimeout(read_timeout)
            conn.read_head()
            return conn
        except (OSError, _Lost) as e:
            conn.close()
            raise self._transport_error(e) from (e if isinstance(e, _Lost) or not _is_lost(e) else _Lost(str(e)))
        except BaseException:
            conn.close()
            raise

    def _read_all(self, conn: _Conn) -> bytes:
        try:
            return b"".join(conn.chunks())
        except OSError as e:
            raise self._transport_error(e) from (_Lost(str(e)) if _is_lost(e) else e)

    def _request(self, method: str, endpoint: str, *, accept: tuple[int, ...] = (), long: bool = False,
                 params: Sequence[tuple[str, str]] | None = None, body: dict[str, Any] | None = None) -> _Reply:
        conn = self._open(method, endpoint, params=params, body=body, read_timeout=None if long else self._timeout)
        try:
            reply = _Reply(conn.status, self._read_all(conn))
        finally:
            conn.close()
        if reply.status != 200 and reply.status not in accept:
            self._raise_for(reply)
        return reply

    def _json(self, response: _Reply) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as e:
            raise ControlError(
                f"the daemon on {self.path} sent a reply that is not JSON: {response.text[:200]!r}"
            ) from e
        if not isinstance(data, dict):
            raise ControlError(f"the daemon on {self.path} sent an unexpected reply: {data!r}")
        return data

    def _raise_for(self, response: _Reply) -> None:
        try:
            message = response.json().get("error") or response.text
        except (ValueError, AttributeError):
            message = response.text
        raise ControlError(f"{message} (HTTP {response.status})" if response.status >= 500 else message)

    def _transport_error(self, e: BaseException) -> ControlError:
        if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
            if not self.path.exists():
                return ControlError(f"llama-supervisord is not running (no socket at {self.path}): {START_HINT}")
            if not os.access(self.path, os.R_OK | os.W_OK):
                return ControlError(
                    f"permission denied on {self.path}: run as root or join the socket's group "
                    f"(usermod -aG llama-supervisor $USER, then log in again)"
                )
            return ControlError(f"llama-supervisord is not running (nobody answers on {self.path}): {START_HINT}")
        if isinstance(e, PermissionError):
            return ControlError(
                f"permission denied on {self.path}: run as root or join the socket's group "
                f"(usermod -aG llama-supervisor $USER, then log in again)"
            )
        if isinstance(e, TimeoutError):
            return ControlError(f"llama-supervisord on {self.path} did not answer in time ({type(e).__name__})")
        return ControlError(f"lost the connection to llama-supervisord on {self.path}: {e}")


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError(f"{key} is {str(value)[:80]!r}, not an absolute path")
    return value


def _is_lost(e: BaseException) -> bool:
    return isinstance(e, (ConnectionResetError, BrokenPipeError))
