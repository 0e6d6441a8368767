"""The control socket's client: one method per /v1/ endpoint, over httpx's Unix-socket transport."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from supervisor.control.api import API_VERSION, CommandResult, ModelResult
from supervisor.core.status import ModelStatus
from supervisor.errors import ControlError

START_HINT = "start it with 'systemctl start llama-supervisor' or 'make run'"


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


class ControlClient:
    """Talks to llama-supervisord on the socket at `path`; every failure is a ControlError."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.path)),
            base_url=f"http://llama-supervisor/{API_VERSION}",
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- queries --------------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/version"))

    def pid(self) -> int:
        return int(self._json(self._request("GET", "/pid"))["pid"])

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
        params = {"name": name, "lines": str(lines), "follow": "1" if follow else "0"}
        timeout = httpx.Timeout(self._timeout, read=None if follow else self._timeout)
        try:
            with self._http.stream("GET", "/logs", params=params, timeout=timeout) as response:
                if response.status_code != 200:
                    response.read()
                    self._raise_for(response)
                yield from response.iter_bytes()
        except httpx.TransportError as e:
            raise self._transport_error(e) from e

    # --- commands -------------------------------------------------------------------------------

    def start(self, names: Sequence[str], *, wait: bool = True) -> CommandResult:
        return self._command("/start", {"names": list(names), "wait": wait}, long=wait)

    def stop(self, names: Sequence[str]) -> CommandResult:
        return self._command("/stop", {"names": list(names)}, long=True)

    def restart(self, names: Sequence[str], *, wait: bool = True) -> CommandResult:
        return self._command("/restart", {"names": list(names), "wait": wait}, long=True)

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
            if isinstance(e.__cause__, (httpx.RemoteProtocolError, httpx.ReadError)):
                return CommandResult(ok=True)
            raise

    # --- plumbing -------------------------------------------------------------------------------

    def _command(self, endpoint: str, body: dict[str, Any], *, long: bool) -> CommandResult:
        # Commands that wait for the loop (a start waits for RUNNING) get no read timeout.
        timeout = httpx.Timeout(self._timeout, read=None) if long else None
        response = self._request("POST", endpoint, json=body, timeout=timeout, accept=(404,))
        data = self._json(response)
        if "ok" not in data:
            self._raise_for(response)
        return command_result_from_json(data)

    def _request(self, method: str, endpoint: str, *, accept: tuple[int, ...] = (),
                 timeout: httpx.Timeout | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(
                method, endpoint, timeout=timeout if timeout is not None else self._timeout, **kwargs,
            )
        except httpx.TransportError as e:
            raise self._transport_error(e) from e
        if response.status_code != 200 and response.status_code not in accept:
            self._raise_for(response)
        return response

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as e:
            raise ControlError(
                f"the daemon on {self.path} sent a reply that is not JSON: {response.text[:200]!r}"
            ) from e
        if not isinstance(data, dict):
            raise ControlError(f"the daemon on {self.path} sent an unexpected reply: {data!r}")
        return data

    def _raise_for(self, response: httpx.Response) -> None:
        try:
            message = response.json().get("error") or response.text
        except ValueError:
            message = response.text
        raise ControlError(f"{message} (HTTP {response.status_code})" if response.status_code >= 500 else message)

    def _transport_error(self, e: httpx.TransportError) -> ControlError:
        if isinstance(e, httpx.ConnectError):
            if not self.path.exists():
                return ControlError(f"llama-supervisord is not running (no socket at {self.path}): {START_HINT}")
            if not os.access(self.path, os.R_OK | os.W_OK):
                return ControlError(
                    f"permission denied on {self.path}: run as root or join the socket's group "
                    f"(usermod -aG llama-supervisor $USER, then log in again)"
                )
            return ControlError(f"llama-supervisord is not running (nobody answers on {self.path}): {START_HINT}")
        if isinstance(e, httpx.TimeoutException):
            return ControlError(f"llama-supervisord on {self.path} did not answer in time ({type(e).__name__})")
        return ControlError(f"lost the connection to llama-supervisord on {self.path}: {e}")
