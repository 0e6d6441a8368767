"""The control API's endpoints under /v1/: each checks its input and talks to the daemon only through
the `Controller` protocol (snapshots and queued commands), never to its state. Names are checked
against the manifest name pattern before use. The HTTP plumbing and its limits are in http.py.
"""

from __future__ import annotations

import dataclasses
from http import HTTPStatus
from typing import Any, ClassVar

from supervisor import __version__
from supervisor.control.api import (
    API_VERSION,
    Command,
    CommandResult,
    Reload,
    Reread,
    RestartModels,
    Shutdown,
    StartModels,
    StopModels,
    Update,
)
from supervisor.control.http import BadRequest, JsonHandler, is_count
from supervisor.core.commands import NAME as _NAME
from supervisor.core.commands import command_for

MAX_LOG_LINES = 100_000


class Handler(JsonHandler):
    routes: ClassVar[dict[tuple[str, str], str]] = {
        ("GET", "version"): "get_version",
        ("GET", "pid"): "get_pid",
        ("GET", "paths"): "get_paths",
        ("GET", "status"): "get_status",
        ("GET", "logs"): "get_logs",
        ("GET", "console"): "get_console",
        ("POST", "start"): "post_start",
        ("POST", "stop"): "post_stop",
        ("POST", "restart"): "post_restart",
        ("POST", "unload"): "post_unload",
        ("POST", "reread"): "post_reread",
        ("POST", "update"): "post_update",
        ("POST", "reload"): "post_reload",
        ("POST", "shutdown"): "post_shutdown",
    }

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

    def get_console(self) -> None:
        """The web console's login URL (`llama-supervisorctl console`): whoever may use this socket may act there."""
        login = getattr(self.server.controller, "console_login", None)
        url = login() if login is not None else None
        if url is None:
            self._error(HTTPStatus.NOT_FOUND, "this daemon serves no console (it runs with --no-gateway)")
            return
        self._send_json(HTTPStatus.OK, {"url": url})

    def post_start(self) -> None:
        body = self._body()
        self._run(command_for("start", _names(body), wait=_flag(body, "wait", True)))

    def post_stop(self) -> None:
        self._run(command_for("stop", _names(self._body())))

    def post_restart(self) -> None:
        body = self._body()
        self._run(command_for("restart", _names(body), wait=_flag(body, "wait", True)))

    def post_unload(self) -> None:
        self._run(command_for("unload", _names(self._body())))

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
            raise BadRequest("logs needs ?name=MODEL")
        _checked_names([name])
        raw_lines = (query.get("lines") or ["100"])[0]
        if not is_count(raw_lines) or int(raw_lines) > MAX_LOG_LINES:
            raise BadRequest(f"lines must be a whole number from 0 to {MAX_LOG_LINES}")
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

    def _run(self, command: Command) -> None:
        # Waits as long as the loop takes (a start waits for RUNNING); the client sets the patience.
        result = self.server.controller.submit(command).result()
        status = HTTPStatus.NOT_FOUND if result.unknown else HTTPStatus.OK
        self._send_json(status, result_to_json(result))


def _names(body: dict[str, Any]) -> tuple[str, ...]:
    names = body.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise BadRequest('"names" must be a non-empty list of model names (or ["all"])')
    return _checked_names(names)


def _checked_names(names: list[str], *, empty_ok: bool = False) -> tuple[str, ...]:
    """Names as the manifests allow them (or "all"), at most 1000, duplicates dropped; else 400."""
    if len(names) > 1000 or (not names and not empty_ok):
        raise BadRequest("give from 1 to 1000 model names")
    for n in names:
        if n != "all" and not _NAME.match(n):
            shown = n if len(n) <= 70 else n[:67] + "..."
            raise BadRequest(f"{shown!r} is not a model name (lowercase letters, digits and dashes, at most 63)")
    return tuple(dict.fromkeys(names))


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f'"{key}" must be true or false')
    return value


def result_to_json(result: CommandResult) -> dict[str, Any]:
    return dataclasses.asdict(result)
