"""The web console's pure parts and its ASGI app over hand-written fakes: the activity ring, the
request recorder in the gateway, escaping, the login token, sessions, CSRF, admin keys, the headers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import Future

import httpx
import pytest
from starlette.routing import Mount

from supervisor.console import pages, views
from supervisor.console.app import CSP, Console, ConsoleSettings
from supervisor.console.auth import COOKIE, Authority, write_token
from supervisor.console.events import EventLog
from supervisor.console.markup import el
from supervisor.core.activity import Activity, Request, tokens_from_tail
from supervisor.core.commands import Command, CommandResult, ModelResult, StartModels, StopModels, Unload
from supervisor.core.status import ModelStatus
from supervisor.gateway.app import GatewaySettings, create_app
from supervisor.gateway.proxy import Upstream
from tests.unit.fakes import FakeClock
from tests.unit.test_gateway_app import RUNNING, FakeBackend, ok

TOKEN = "login-token-0123456789"
ADMIN_KEY = "admin-key-abcdef"
INFERENCE_KEY = "inference-key-xyz"
HOST = "http://127.0.0.1:8080"


def status(name: str = "gemma", state: str = "RUNNING", **kw: object) -> ModelStatus:
    values: dict[str, object] = dict(name=name, state=state, port=9001, container_id="c1", image_id=None,
                                     uptime_s=65.0, restarts=2, last_exit_code=137, reason="healthy",
                                     memory_counted=512 << 20)
    values.update(kw)
    return ModelStatus(**values)  # type: ignore[arg-type]


class FakeDaemon:
    def __init__(self, models: list[ModelStatus]) -> None:
        self.models = models
        self.commands: list[Command] = []
        self.log_chunks: list[bytes] = []
        self._log_read = 0
        self.looked = 0                  # how many times the statuses were asked for

    def status(self, names: tuple[str, ...] = ()) -> list[ModelStatus]:
        self.looked += 1
        return [m for m in self.models if not names or m.name in names]

    def submit(self, command: Command) -> Future[CommandResult]:
        self.commands.append(command)
        fut: Future[CommandResult] = Future()
        fut.set_result(CommandResult(ok=True, results=(ModelResult("gemma", True, "stopped"),)))
        return fut

    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        """With lines: the whole log; lines=0 (followed again): what came since the last read."""
        chunks = self.log_chunks[0 if lines else self._log_read:]
        self._log_read = len(self.log_chunks)
        return iter(list(chunks))

    def runtime(self) -> str:
        return "docker"


# --- the activity ring ------------------------------------------------------------------------------

def test_the_ring_keeps_the_last_n_finished_and_caps_those_in_flight() -> None:
    a = Activity(size=3, max_inflight=2)
    ids = [a.begin(float(i), "m", "/v1/x") for i in range(3)]
    assert ids[2] is None and a.untracked == 1                # the third in flight is not stored
    for rid in ids[:2]:
        a.end(rid, status=200, duration_s=1.0, tokens=10, client_gone=False)
    for i in range(5):
        a.end(a.begin(10.0 + i, "m", "/v1/x"), status=200, duration_s=1.0, tokens=None, client_gone=False)
    inflight, done = a.snapshot()
    assert inflight == () and [r.started for r in done] == [14.0, 13.0, 12.0]   # newest first, 3 kept


def test_tokens_per_second_counts_generation_time_only() -> None:
    r = Request(1, 0.0, "m", "/v1/x", status=200, ttft_s=0.5, tokens=30, duration_s=2.0, streamed=True)
    assert r.tokens_per_s == pytest.approx(20.0)
    assert Request(1, 0.0, "m", "/v1/x", tokens=3, duration_s=0.5, ttft_s=0.5, streamed=True).tokens_per_s is None
    # an answer in one piece: its first byte is its end (seen live: 8 tokens "at 12865.5 tokens/s")
    whole = Request(1, 0.0, "m", "/v1/x", status=200, ttft_s=1.0399, tokens=8, duration_s=1.04)
    assert whole.tokens_per_s == pytest.approx(8 / 1.04)
    assert views.request_row(whole, 0.0)[4] == "—", "no time to first token apart from the end"


def test_the_token_count_is_the_last_one_an_answer_gives() -> None:
    stream = (b'data: {"choices":[]}\n\ndata: {"usage":{"completion_tokens":7}}\n\n'
              b'data: {"usage":{"completion_tokens":12},"timings":{"predicted_n":12}}\n\ndata: [DONE]\n\n')
    assert tokens_from_tail(stream) == 12
    assert tokens_from_tail(b'{"timings":{"predicted_n":5}}') == 5
    assert tokens_from_tail(b'{"error":"x"}') is None


def test_the_gateway_records_model_status_queue_wait_and_tokens() -> None:
    activity = Activity()
    answer = {"choices": [{"text": "hi"}], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}
    up = Upstream(transport=httpx.MockTransport(lambda r: ok(answer)))
    app = create_app(FakeBackend(RUNNING), GatewaySettings(), upstream=up, activity=activity)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=HOST) as c:
            r = await c.post("/v1/completions", json={"model": "m-alias", "prompt": "x"})
            assert r.status_code == 200
            r = await c.post("/v1/completions", json={"model": "nope", "prompt": "x"})
            assert r.status_code == 404
            await c.get("/v1/models")                             # not an inference request: not recorded

    asyncio.run(go())
    inflight, done = activity.snapshot()
    assert inflight == ()
    assert [(r.model, r.status, r.tokens) for r in done] == [("", 404, None), ("m", 200, 9)]
    assert done[1].queue_wait_s is not None and done[1].ttft_s is not None and not done[1].client_gone
    assert not done[1].streamed


def test_the_gateway_marks_a_streamed_answer() -> None:
    activity = Activity()
    sse = b'data: {"choices":[{"text":"hi"}]}\n\ndata: {"usage":{"completion_tokens":4}}\n\ndata: [DONE]\n\n'
    up = Upstream(transport=httpx.MockTransport(lambda r: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=httpx.ByteStream(sse))))
    app = create_app(FakeBackend(RUNNING), GatewaySettings(), upstream=up, activity=activity)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=HOST) as c:
            r = await c.post("/v1/completions", json={"model": "m-alias", "prompt": "x", "stream": True})
            assert r.status_code == 200

    asyncio.run(go())
    (done,) = activity.snapshot()[1]
    assert done.streamed and done.tokens == 4


# --- rendering ------------------------------------------------------------------------------------

def test_every_value_is_escaped() -> None:
    assert el("td", "<script>x</script>", title='"><b>') == '<td title="&quot;&gt;&lt;b&gt;">&lt;script&gt;x&lt;/script&gt;</td>'


def test_a_manifest_value_holding_script_renders_as_text() -> None:
    m = status(reason="<script>alert(1)</script>", aliases=("<img src=x onerror=alert(2)>",))
    view = views.models_view([m], views.Budgets(1 << 30, None), {}, "docker")
    html = pages.models_page(view, csrf="", admin=False)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_models_page_shows_what_the_issue_lists_with_named_buttons() -> None:
    m = status(aliases=("g",), idle_s=30.0, ttl_left_s=270.0, inflight=1, waiting=2, memory_used=300 << 20,
               lifecycle="on-demand", image_id="sha256:" + "a" * 64)
    view = views.models_view([m], views.Budgets(4 << 30, None), {"sha256:" + "a" * 64: "cpu-avx2"}, "docker")
    html = pages.models_page(view, csrf="c", admin=True)
    for text in ("RUNNING", "healthy", "on-demand", "docker · cpu-avx2", "9001", "1m 05s", "137", "512.0 MiB",
                 "using 300.0 MiB", "30s ago", "4m 30s", "1 / 2", "<meter", 'aria-label="Stop gemma"',
                 'aria-label="Restart gemma"'):
        assert text in html, text
    assert 'aria-label="Start gemma"' not in html
    assert pages.HOW_TO_LOGIN not in html                       # an admin sees no read-only banner
    assert pages.HOW_TO_LOGIN in pages.models_page(view, csrf="", admin=False)


def test_the_cards_show_verification_kv_cache_failures_backoff_and_unload_for_on_demand_models() -> None:
    checked = "model file SHA-256 a5fd3b62230a and image f56efabe075d checked before this container was created"
    lazy = status("lazy", lifecycle="on-demand", verified=checked, kv_tokens=1234, kv_bytes=5 << 20,
                  kv_note="on (on-demand)")
    failing = status("failing", "BACKOFF", failures=2, max_failures=5, retry_in_s=3.42, kv_note="off: always model")
    steady = status("steady")
    html = pages.models_page(views.models_view([lazy, failing, steady], views.Budgets(4 << 30, None), {}, "docker"),
                             csrf="c", admin=True)
    for text in (checked, "1234 tokens, 5.0 MiB on disk", "off: always model", "2 of 5 failed starts before FATAL",
                 "retry in 3.4s", 'aria-label="Unload lazy"'):
        assert text in html, text
    assert 'aria-label="Unload steady"' not in html and 'aria-label="Unload failing"' not in html
    assert "Unload" not in json.dumps(views.models_view([status("lazy", "STOPPED", lifecycle="on-demand")],
                                                         views.Budgets(None, None), {}, "docker")), \
        "nothing to unload when it is not loaded"


def test_unload_from_the_console_queues_the_unload_command() -> None:
    daemon = FakeDaemon([status(lifecycle="on-demand")])

    async def go() -> None:
        c, _ = console_client(daemon)
        async with c:
            r = await c.post("/ui/api/models/gemma/unload", json={}, headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert r.status_code == 200 and r.json()["ok"]
    run(go())
    assert daemon.commands == [Unload(("gemma",))]


@pytest.mark.timeout(10)
def test_after_an_action_a_change_is_seen_at_once_not_at_the_next_tick() -> None:
    daemon = FakeDaemon([status()])
    console = Console(daemon, Activity(), Authority(TOKEN, [ADMIN_KEY]), settings=ConsoleSettings(tick_s=60.0))
    console.start()

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=console.app), base_url=HOST) as c:
            r = await c.post("/api/models/gemma/stop", json={}, headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert r.status_code == 200

    try:
        run(go())
        deadline = time.monotonic() + 5
        while daemon.looked == 0 and time.monotonic() < deadline:      # the action woke the watcher
            time.sleep(0.01)
        assert daemon.looked, "the action wakes the watcher (its tick is 60 s)"
        daemon.models = [status(state="STOPPED", reason="stopped")]    # the loop stops it a moment later
        while not console.events.recent() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [(e.model, e.text) for e in console.events.recent()][:1] == [("gemma", "RUNNING → STOPPED: stopped")]
    finally:
        console.close()


def test_open_pages_share_one_encoded_event_for_the_same_view() -> None:
    """Each stream holds the last chunk it sent while it waits: the same view is one bytes object, not one
    per page (the console's RSS with 10 pages open, docs/BENCHMARKS.md)."""
    console = Console(FakeDaemon([status()]), Activity(), Authority(TOKEN))
    text = console.models_json()
    first = console._encoded("models", text)
    assert first == b"event: models\ndata: " + text.encode() + b"\n\n"
    assert console._encoded("models", "".join(list(text))) is first      # an equal text from another page
    assert console._encoded("models", text + " ") is not first


def test_the_daemon_events_are_read_off_successive_snapshots() -> None:
    log = EventLog()
    log.observe([status("a"), status("b")], 1.0)
    log.observe([status("a", "STOPPED", reason="evicted for b (memory)"), status("c", "STOPPED")], 2.0)
    assert [(e.model, e.kind, e.text) for e in log.recent()] == [
        ("b", "manifest", "removed"), ("c", "manifest", "added (STOPPED)"),
        ("a", "eviction", "RUNNING → STOPPED: evicted for b (memory)")]


# --- authority ----------------------------------------------------------------------------------------

def test_the_token_buys_a_session_and_sessions_are_bounded_and_expire() -> None:
    clock = FakeClock()
    auth = Authority(TOKEN, [ADMIN_KEY], clock=clock, max_sessions=2, ttl_s=60)
    assert auth.login("wrong") is None and auth.login("") is None
    s1, s2, s3 = (auth.login(TOKEN) for _ in range(3))
    assert s1 and s2 and s3
    assert auth.session(s1.id) is None and auth.session(s3.id) == s3        # the oldest went
    assert auth.may_act(s3.id, "", s3.csrf) and not auth.may_act(s3.id, "", "") and not auth.may_act(s3.id, "", s2.csrf)
    clock.advance(61)
    assert auth.session(s3.id) is None
    assert auth.may_act("", ADMIN_KEY, "") and not auth.may_act("", INFERENCE_KEY, "")


def test_the_token_file_is_the_owners_alone(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "console.default.token"
    write_token(path, TOKEN)
    assert path.read_text().strip() == TOKEN and path.stat().st_mode & 0o777 == 0o600


# --- the app ------------------------------------------------------------------------------------------

def console_client(daemon: FakeDaemon, *, api_keys: frozenset[str] = frozenset(),
                   activity: Activity | None = None) -> tuple[httpx.AsyncClient, Console]:
    activity = activity or Activity()
    console = Console(daemon, activity, Authority(TOKEN, [ADMIN_KEY]), settings=ConsoleSettings(public_read=not api_keys))
    app = create_app(FakeBackend(RUNNING), GatewaySettings(api_keys=api_keys), activity=activity,
                     mounts=[Mount("/ui", app=console.app)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=HOST), console


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_pages_carry_the_csp_and_render_without_script() -> None:
    daemon = FakeDaemon([status()])

    async def go() -> None:
        c, _ = console_client(daemon)
        async with c:
            for path in ("/ui/", "/ui/activity", "/ui/logs", "/ui/host"):
                r = await c.get(path)
                assert r.status_code == 200, path
                assert r.headers["content-security-policy"] == CSP
                assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
                assert r.headers["x-content-type-options"] == "nosniff"
                assert r.headers["referrer-policy"] == "no-referrer"
                assert "<script>" not in r.text                          # no inline script
            r = await c.get("/ui/")
            assert 'data-model="gemma"' in r.text and "RUNNING" in r.text
            js = await c.get("/ui/static/console.js")
            assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
            assert (await c.get("/ui/static/../app.py")).status_code == 404
            assert "innerHTML" not in js.text and "insertAdjacentHTML" not in js.text

    run(go())


def test_without_the_token_actions_are_refused_and_the_page_says_how() -> None:
    daemon = FakeDaemon([status()])

    async def go() -> None:
        c, _ = console_client(daemon)
        async with c:
            r = await c.get("/ui/")
            assert "llama-supervisorctl console" in r.text
            r = await c.post("/ui/api/models/gemma/stop", json={}, headers={"origin": HOST})
            assert r.status_code == 401 and "llama-supervisorctl console" in r.json()["error"]
            r = await c.post("/ui/api/models/gemma/stop", json={}, headers={"authorization": f"Bearer {INFERENCE_KEY}"})
            assert r.status_code == 401
            r = await c.get("/ui/login?token=nope")
            assert r.status_code == 401 and COOKIE not in r.headers.get("set-cookie", "")
    run(go())
    assert daemon.commands == []


def test_login_sets_a_strict_cookie_and_actions_need_its_csrf_token_and_an_origin() -> None:
    daemon = FakeDaemon([status()])

    async def go() -> None:
        c, _ = console_client(daemon)
        async with c:
            r = await c.get(f"/ui/login?token={TOKEN}")
            assert r.status_code == 303 and r.headers["location"] == "/ui/"
            cookie = r.headers["set-cookie"].lower()
            for part in ("httponly", "samesite=strict", "path=/ui"):
                assert part in cookie
            page = (await c.get("/ui/")).text
            csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
            assert csrf and pages.HOW_TO_LOGIN not in page
            r = await c.post("/ui/api/models/gemma/stop", json={}, headers={"origin": HOST})
            assert r.status_code == 401                                  # no CSRF token
            r = await c.post("/ui/api/models/gemma/stop", json={}, headers={"x-csrf-token": csrf})
            assert r.status_code == 401                                  # no Origin
            r = await c.post("/ui/api/models/gemma/stop", json={}, headers={"origin": "http://evil.example",
                                                                             "x-csrf-token": csrf})
            assert r.status_code == 403                                  # the Guard: another origin
            r = await c.post("/ui/api/models/gemma/stop", json={}, headers={"origin": HOST, "x-csrf-token": csrf})
            assert r.status_code == 200 and r.json()["ok"]
            r = await c.post("/ui/api/models/gemma/start", json={}, headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert r.status_code == 200
            r = await c.post("/ui/api/models/Bad!/stop", json={}, headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert r.status_code == 400
    run(go())
    assert daemon.commands == [StopModels(("gemma",)), StartModels(("gemma",), wait=False)]


def test_with_inference_keys_reading_needs_a_login_too() -> None:
    daemon = FakeDaemon([status()])

    async def go() -> None:
        c, _ = console_client(daemon, api_keys=frozenset({INFERENCE_KEY}))
        async with c:
            assert (await c.get("/ui/")).status_code == 401
            assert (await c.get("/ui/", headers={"authorization": f"Bearer {INFERENCE_KEY}"})).status_code == 401
            assert (await c.get("/ui/", headers={"authorization": f"Bearer {ADMIN_KEY}"})).status_code == 200
    run(go())


@pytest.mark.timeout(10)
def _events_scope(query: bytes) -> dict[str, object]:
    """The ASGI scope of a page's GET /events (driven directly: httpx's ASGITransport reads a whole body first)."""
    return {"type": "http", "method": "GET", "path": "/events", "raw_path": b"/events", "root_path": "",
            "query_string": query, "headers": [(b"host", b"127.0.0.1:8080")], "scheme": "http",
            "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 1234), "http_version": "1.1"}


def test_the_event_stream_sends_activity_as_it_happens_and_frees_its_slot() -> None:
    """Driven as ASGI directly (httpx's ASGITransport reads a whole body before it answers)."""
    activity = Activity()
    console = Console(FakeDaemon([status()]), activity, Authority(TOKEN), settings=ConsoleSettings(tick_s=5.0))

    async def go() -> None:
        sent: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        gone = asyncio.Event()

        async def receive() -> dict[str, object]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            await sent.put(message)

        task = asyncio.create_task(console.app(_events_scope(b"page=activity"), receive, send))

        async def event() -> tuple[str, object]:
            while True:
                body = (await sent.get()).get("body", b"")
                for block in bytes(body).decode().split("\n\n"):  # type: ignore[arg-type]
                    fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
                    if "event" in fields:
                        return fields["event"], json.loads(fields["data"])

        start = await asyncio.wait_for(sent.get(), 2)
        assert start["status"] == 200
        assert (await asyncio.wait_for(event(), 2)) == ("activity", {"inflight": [], "done": []})
        assert console.streams == 1
        rid = activity.begin(time.time(), "gemma", "/v1/completions")
        activity.end(rid, status=200, duration_s=0.25, tokens=5, client_gone=False)
        kind, view = await asyncio.wait_for(event(), 1.0)      # woken by the ring, not by the 5 s tick
        assert kind == "activity" and view["done"][0][1:3] == ["gemma", "200"]  # type: ignore[index]
        gone.set()
        await asyncio.wait_for(task, 2)
        assert console.streams == 0

    run(go())


def test_end_streams_ends_every_open_event_stream_so_a_graceful_stop_is_not_held() -> None:
    """The gateway's graceful stop waits for requests in flight; a console page streams forever, so the
    daemon waited out its whole grace (30 s) for it. end_streams (called first by the drain) ends them."""
    console = Console(FakeDaemon([status()]), Activity(), Authority(TOKEN), settings=ConsoleSettings(tick_s=60.0))

    async def go() -> None:
        sent: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        never = asyncio.Event()

        async def receive() -> dict[str, object]:
            await never.wait()          # the page stays open
            return {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            await sent.put(message)

        task = asyncio.create_task(console.app(_events_scope(b"page=models"), receive, send))
        assert (await asyncio.wait_for(sent.get(), 2))["status"] == 200
        while console.streams == 0:
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)       # the stream is waiting for a change (60 s tick, 15 s heartbeat)
        assert not task.done()
        console.end_streams()
        await asyncio.wait_for(task, 2)  # ended by end_streams, not by the page or a timer
        assert console.streams == 0

    run(go())
