"""The console's ASGI app, mounted at /ui on the gateway's listener (behind its Guard: Host, Origin,
Sec-Fetch-Site, JSON bodies). Pages are server-rendered; one event stream (/ui/events) keeps them live.

- Reading: open to whoever reaches the gateway, unless the gateway has inference keys (then a session
  or an admin key); a model's log always needs a session or an admin key.
- Acting: POST /ui/api/models/NAME/ACTION (start, stop, restart) with an admin key, or with a session
  cookie + its CSRF token + an Origin (the Guard checked it is this gateway's); the command is built by
  core.commands.command_for and queued like the control socket's.
- Bounds: `max_streams` event streams and `max_followers` followed logs at once (503 beyond), each
  stream's log lines in a bounded buffer, sessions bounded (auth.py), the activity ring bounded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from supervisor.artifacts.lock import ImageLock, read_lock
from supervisor.console import pages, views
from supervisor.console.auth import COOKIE, CSRF_HEADER, Access, Authority
from supervisor.console.events import EventLog
from supervisor.console.follow import LogFollower
from supervisor.core.activity import Activity
from supervisor.core.commands import ACTIONS, NAME, Command, CommandResult, command_for
from supervisor.core.status import ModelStatus
from supervisor.errors import ConfigError
from supervisor.gateway.keys import bearer

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
       " frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
HEARTBEAT_S = 15.0
ACTION_WAIT_S = 1.0        # an action's answer waits this long for the loop's; then 202, the page follows it live
HURRY_S = 0.05             # after an action the statuses are looked at this often (a stop shows as it lands) ...
HURRY_FOR_S = 15.0         # ... for this long


class Daemon(Protocol):
    """What the console needs of the daemon (DaemonController is one)."""

    def status(self, names: tuple[str, ...] = ()) -> list[ModelStatus]: ...
    def submit(self, command: Command) -> Future[CommandResult]: ...
    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]: ...
    def runtime(self) -> str: ...


@dataclass(frozen=True)
class HostFacts:
    cores: int = 0
    memory_bytes: int = 0
    arch: str = ""
    gpus: tuple[tuple[str, int], ...] = ()          # (name, memory bytes)
    budgets: views.Budgets = views.Budgets(None, None)
    lock_path: Path | None = None


@dataclass(frozen=True)
class ConsoleSettings:
    public_read: bool = True          # False when the gateway has inference keys
    max_streams: int = 16
    max_followers: int = 4
    tick_s: float = 1.0               # how often the statuses are looked at (events, pokes); in-flight rows refresh


@dataclass
class _Lock:
    """The image lock, read again when its file changes (mtime)."""

    path: Path | None
    _seen: tuple[int, ImageLock] | None = field(default=None)

    def get(self) -> ImageLock:
        if self.path is None:
            return ImageLock()
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return ImageLock()
        if self._seen is None or self._seen[0] != mtime:
            try:
                self._seen = (mtime, read_lock(self.path))
            except (OSError, ConfigError, ValueError):
                return ImageLock()
        return self._seen[1]


class Console:
    def __init__(self, daemon: Daemon, activity: Activity, authority: Authority, host: HostFacts = HostFacts(),
                 settings: ConsoleSettings = ConsoleSettings(), *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.daemon, self.activity, self.authority = daemon, activity, authority
        self.host, self.settings, self.clock, self.wall = host, settings, clock, wall
        self.events = EventLog()
        self.lock = _Lock(host.lock_path)
        self.streams = 0
        self.followers = 0
        self._pokes: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._models_text = ""
        self._models_seen: tuple[tuple[ModelStatus, ...], str, dict[str, str]] | None = None
        self._encoded_events: dict[str, tuple[str, bytes]] = {}
        self._stop = threading.Event()
        self._ending = threading.Event()    # the daemon stops: every event stream ends (end_streams)
        self._kick = threading.Event()      # an action: look now, and often for a while
        self._hurry_until = float("-inf")
        self._watcher: threading.Thread | None = None
        activity.wake = self.poke
        routes = [
            Route("/", self.models_page, methods=["GET"]),
            Route("/activity", self.activity_page, methods=["GET"]),
            Route("/logs", self.logs_page, methods=["GET"]),
            Route("/host", self.host_page, methods=["GET"]),
            Route("/login", self.login, methods=["GET"]),
            Route("/events", self.stream, methods=["GET"]),
            Route("/api/models/{name}/{action}", self.act, methods=["POST"]),
            Route("/static/{file}", self.static, methods=["GET"]),
        ]
        self.app = SecurityHeaders(Starlette(routes=routes))
        here = Path(__file__).parent / "static"       # package data ([tool.setuptools.package-data])
        self._static = {name: (here / name).read_bytes() for name in STATIC}

    # --- the daemon's events, looked for on a thread while the daemon runs --------------------------

    def start(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name="console-events", daemon=True)
        self._watcher.start()

    def end_streams(self) -> None:
        """The daemon stops: every open event stream ends now. The gateway's graceful stop calls this
        first, so it waits for inference requests, not for pages that would stream forever."""
        self._ending.set()
        self.poke()

    def close(self) -> None:
        self.end_streams()
        self._stop.set()
        self._kick.set()
        if self._watcher is not None:
            self._watcher.join(5)

    def _watch(self) -> None:
        """Every tick: the daemon's events, and a poke to the open pages when any status changed (at rest,
        nothing changes and no page is woken). For a while after an action, every HURRY_S."""
        last: tuple[ModelStatus, ...] = ()
        while True:
            self._kick.wait(HURRY_S if self.clock() < self._hurry_until else self.settings.tick_s)
            self._kick.clear()
            if self._stop.is_set():
                return
            statuses = tuple(self.daemon.status())
            self.events.observe(statuses, self.wall())
            if statuses != last:
                last = statuses
                self.poke()

    def poke(self) -> None:
        """Something changed: every open stream looks now (from any thread)."""
        loop = self._loop
        if loop is None or not self._pokes:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._set_all()
        else:
            loop.call_soon_threadsafe(self._set_all)

    def _set_all(self) -> None:
        for e in list(self._pokes):
            e.set()

    # --- who is asking --------------------------------------------------------------------------------

    def access(self, request: Request) -> tuple[Access, str]:
        """(access, the session's CSRF token or '')."""
        access, session = self.authority.access(request.cookies.get(COOKIE, ""),
                                                bearer(request.headers.get("authorization", "")))
        return access, session.csrf if session else ""

    def _reader(self, request: Request) -> tuple[bool, str] | Response:
        access, csrf = self.access(request)
        if access is Access.NONE and not self.settings.public_read:
            return HTMLResponse(pages.message_page("Login needed", "This gateway has API keys, so its console needs"
                                                   " the login URL too: run 'llama-supervisorctl console'."),
                                status_code=401)
        return access is not Access.NONE, csrf

    # --- views -------------------------------------------------------------------------------------------

    def variants(self) -> dict[str, str]:
        return {r.image_id: r.variant for r in self.lock.get().images.values()}

    def models_view(self) -> dict[str, Any]:
        return views.models_view(self.daemon.status(), self.host.budgets, self.variants(), self.daemon.runtime())

    def models_json(self) -> str:
        """The models view as JSON, formatted again only when the statuses changed (every open page shares it)."""
        statuses, runtime, variants = tuple(self.daemon.status()), self.daemon.runtime(), self.variants()
        if self._models_seen is not None and self._models_seen == (statuses, runtime, variants):
            return self._models_text                  # nothing changed: not formatted again (the cost at rest)
        self._models_text = json.dumps(views.models_view(statuses, self.host.budgets, variants, runtime),
                                       separators=(",", ":"))
        self._models_seen = (statuses, runtime, variants)
        return self._models_text

    def activity_view(self) -> dict[str, Any]:
        inflight, done = self.activity.snapshot()
        return views.activity_view(inflight, done, self.wall())

    def event_rows(self) -> list[list[str]]:
        return [e.row() for e in self.events.recent()]

    def host_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        h, b = self.host, self.host.budgets
        statuses = self.daemon.status()
        counted = sum(m.memory_counted or 0 for m in statuses if m.state in ("STARTING", "RUNNING", "DRAINING",
                                                                               "STOPPING", "BACKOFF"))
        gpus = [(f"GPU {i}", f"{name}, {views.size(mem)}") for i, (name, mem) in enumerate(h.gpus)] or [("GPUs", "none")]
        lock = self.lock.get()
        images = [(f"image {r.variant}", f"{r.tag} · {r.image_id[:19]} · binary SHA-256 {r.binary_sha256}"
                   f" · {r.version} (build {r.build_number}) · built {r.built_at}") for r in lock.images.values()]
        binaries = [(f"binary {r.variant}", f"{r.path} · SHA-256 {r.sha256} · {r.version} (build {r.build_number})")
                    for r in lock.binaries.values()]
        return [
            ("Machine", [("Cores", str(h.cores)), ("Memory", views.size(h.memory_bytes)), ("Architecture", h.arch),
                         *gpus]),
            ("Budgets", [("Memory budget", views.size(b.memory_bytes) if b.memory_bytes else "none"),
                         ("Counted by loaded models", views.size(counted)),
                         ("GPU memory budget", views.size(b.gpu_memory_bytes) if b.gpu_memory_bytes else "none")]),
            ("Runtime", [("Runtime", self.daemon.runtime()), ("Models", str(len(statuses)))]),
            ("Image lock", [("Lock file", str(h.lock_path) if h.lock_path else "—"), *images, *binaries]
             if images or binaries else [("Lock file", f"{h.lock_path}: no image built yet")]),
        ]

    # --- pages ---------------------------------------------------------------------------------------------

    async def models_page(self, request: Request) -> Response:
        who = self._reader(request)
        if isinstance(who, Response):
            return who
        admin, csrf = who
        return _page(pages.models_page(self.models_view(), csrf=csrf, admin=admin))

    async def activity_page(self, request: Request) -> Response:
        who = self._reader(request)
        if isinstance(who, Response):
            return who
        admin, csrf = who
        return _page(pages.activity_page(self.activity_view(), views.ACTIVITY_COLUMNS, csrf=csrf, admin=admin))

    async def logs_page(self, request: Request) -> Response:
        who = self._reader(request)
        if isinstance(who, Response):
            return who
        admin, csrf = who
        names = [m.name for m in self.daemon.status()]
        model = request.query_params.get("model")
        if model is not None and model not in names:
            model = None
        return _page(pages.logs_page(names, model, self.event_rows(), csrf=csrf, admin=admin))

    async def host_page(self, request: Request) -> Response:
        who = self._reader(request)
        if isinstance(who, Response):
            return who
        admin, csrf = who
        return _page(pages.host_page(self.host_sections(), csrf=csrf, admin=admin))

    async def login(self, request: Request) -> Response:
        session = self.authority.login(request.query_params.get("token", ""))
        if session is None:
            return HTMLResponse(pages.message_page("Login failed", "That token is not this daemon's (it changes when"
                                                   " the daemon restarts): run 'llama-supervisorctl console' again."),
                                status_code=401)
        response = RedirectResponse("/ui/", status_code=303)     # the token leaves the address bar
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict", path="/ui",
                            max_age=int(self.authority.ttl_s))
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["file"]
        if name not in STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(self._static[name], media_type=STATIC[name], headers={"cache-control": "no-cache"})

    # --- actions -----------------------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        token = bearer(request.headers.get("authorization", ""))
        if not self.authority.may_act(request.cookies.get(COOKIE, ""), token, request.headers.get(CSRF_HEADER, "")) \
                or (not token and "origin" not in request.headers):
            return JSONResponse({"ok": False, "error": pages.HOW_TO_LOGIN}, status_code=401)
        action, name = request.path_params["action"], request.path_params["name"]
        if action not in ACTIONS:
            return JSONResponse({"ok": False, "error": f"no action {action!r} (one of: {', '.join(ACTIONS)})"},
                                status_code=404)
        if not NAME.match(name):
            return JSONResponse({"ok": False, "error": f"{name[:70]!r} is not a model name (lowercase letters, digits"
                                 " and dashes, at most 63)"}, status_code=400)
        command = command_for(action, (name,), wait=False)
        self._hurry_until = self.clock() + HURRY_FOR_S
        self._kick.set()
        future = asyncio.wrap_future(self.daemon.submit(command))
        done, _ = await asyncio.wait({future}, timeout=ACTION_WAIT_S)
        if not done:
            return JSONResponse({"ok": True, "message": f"{action} {name}: in progress"}, status_code=202)
        result = future.result()
        if result.unknown:
            return JSONResponse({"ok": False, "error": f"no such model: {name}"}, status_code=404)
        message = "; ".join(f"{r.name}: {r.message}" for r in result.results) or (result.error or action)
        self.poke()
        return JSONResponse({"ok": result.ok, "message": message}, status_code=200 if result.ok else 409)

    # --- the event stream ------------------------------------------------------------------------------------

    async def stream(self, request: Request) -> Response:
        who = self._reader(request)
        if isinstance(who, Response):
            return who
        admin, _ = who
        page = request.query_params.get("page", "models")
        model = request.query_params.get("model") if admin and page == "logs" else None
        if model is not None and not self.daemon.status((model,)):
            model = None
        if self.streams >= self.settings.max_streams:
            return JSONResponse({"error": f"too many console pages open ({self.settings.max_streams}); close one"},
                                status_code=503, headers={"retry-after": "5"})
        if model is not None and self.followers >= self.settings.max_followers:
            return JSONResponse({"error": f"too many logs followed ({self.settings.max_followers}); close one"},
                                status_code=503, headers={"retry-after": "5"})
        self._loop = asyncio.get_running_loop()
        poke = asyncio.Event()
        follower = LogFollower(self.daemon, model, self.poke) if model is not None else None
        self.streams += 1
        self.followers += follower is not None
        self._pokes.add(poke)
        if follower is not None:
            follower.start()

        def release() -> None:
            self._pokes.discard(poke)
            self.streams -= 1
            if follower is not None:
                self.followers -= 1
                follower.close()

        return _Stream(self._events(page, poke, follower), release)

    def _feeds(self, page: str) -> list[tuple[str, Callable[[], str]]]:
        if page == "activity":
            return [("activity", lambda: json.dumps(self.activity_view(), separators=(",", ":")))]
        if page == "logs":
            return [("events", lambda: json.dumps(self.event_rows(), separators=(",", ":")))]
        return [("models", self.models_json)]

    def _encoded(self, kind: str, text: str) -> bytes:
        """The event's bytes, one object for every open page that sends the same text: each stream holds
        the last chunk it sent while it waits (Starlette's loop variable), so 10 pages hold one view."""
        seen = self._encoded_events.get(kind)
        if seen is None or seen[0] != text:
            seen = (text, f"event: {kind}\ndata: {text}\n\n".encode())
            self._encoded_events[kind] = seen
        return seen[1]

    async def _events(self, page: str, poke: asyncio.Event, follower: LogFollower | None) -> AsyncIterator[bytes]:
        sent: dict[str, str] = {}
        quiet_since = self.clock()
        versions: tuple[int, int] = (-1, -1)
        yield b"retry: 2000\n\n"
        while not self._ending.is_set():
            poke.clear()                 # before looking: a change while this pass runs wakes the next one
            out: list[bytes] = []
            now_versions = (self.activity.version, self.events.version)
            for kind, make in self._feeds(page):
                # activity and events change only with their versions (in-flight rows tick with time)
                if kind != "models" and now_versions == versions and not self.activity.snapshot()[0] \
                        and kind in sent:
                    continue
                text = make()
                if sent.get(kind) != text:
                    sent[kind] = text
                    out.append(self._encoded(kind, text))
            versions = now_versions
            if follower is not None and (lines := follower.take()):
                out.append(b"event: log\ndata: " + json.dumps(lines, separators=(",", ":")).encode() + b"\n\n")
            if out:
                quiet_since = self.clock()
                yield b"".join(out)
            elif self.clock() - quiet_since >= HEARTBEAT_S:
                quiet_since = self.clock()
                yield b": still here\n\n"
            # woken by a change (the watcher's poke, the activity ring, a log line); the clock alone wakes
            # it only for a heartbeat, or every tick while requests are in flight (their rows count time)
            patience = self.settings.tick_s if self.activity.snapshot()[0] else HEARTBEAT_S
            try:
                await asyncio.wait_for(poke.wait(), timeout=patience)
            except asyncio.TimeoutError:
                pass


class _Stream(StreamingResponse):
    """The event stream; `release` runs once it is over, however it ends (the page closed, never started)."""

    def __init__(self, body: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"cache-control": "no-store", "x-accel-buffering": "no"})
        self.release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def _page(html: str) -> Response:
    return HTMLResponse(html, headers={"cache-control": "no-store"})


class SecurityHeaders:
    """ASGI: the CSP and its companions on every console answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)
