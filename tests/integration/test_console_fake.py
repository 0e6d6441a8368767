"""The console in a real headless browser over a hand-written daemon (no engine needed): the script's
live updates, the refusal without a token, login and an action, text never HTML, keyboard, 390 px.
The same against the real daemon and model: test_console_browser.py."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.routing import Mount

from supervisor.console.app import Console, HostFacts
from supervisor.console.views import Budgets
from supervisor.console.auth import Authority
from supervisor.core.activity import Activity
from supervisor.core.commands import StopModels
from supervisor.gateway.app import GatewaySettings, create_app
from supervisor.gateway.proxy import Upstream
from tests.unit.test_console import FakeDaemon, status
from tests.unit.test_gateway_app import RUNNING, FakeBackend, ok

from .console_browser import browser, card_state, until  # noqa: F401  (a fixture)

TOKEN = "fake-login-token"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, FakeDaemon]]:
    daemon = FakeDaemon([status("m", reason="healthy"),
                         status("evil", "FATAL", reason="<script>alert(1)</script> in /tmp/<b>x</b>", port=None)])
    activity = Activity()
    daemon.log_chunks.append(b"main: server is listening on http://0.0.0.0:8080\n\x1b]0;retitled\x07ok\n")
    host = HostFacts(cores=16, memory_bytes=64 << 30, arch="x86_64", budgets=Budgets(8 << 30, None))
    console = Console(daemon, activity, Authority(TOKEN), host)
    up = Upstream(transport=httpx.MockTransport(lambda r: ok({"usage": {"completion_tokens": 4}})))
    app = create_app(FakeBackend(RUNNING), GatewaySettings(), upstream=up, activity=activity,
                     mounts=[Mount("/ui", app=console.app)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    until(None, 10, "the server", lambda _: server.started)
    console.start()
    try:
        yield f"http://127.0.0.1:{port}", daemon
    finally:
        console.close()
        server.should_exit = True
        thread.join(5)


def test_models_render_text_as_text_and_no_script_runs(browser: Any, served: tuple[str, FakeDaemon]) -> None:
    from selenium.webdriver.common.by import By

    base, daemon = served
    browser.get(base + "/ui/")
    assert card_state(browser, "m") == "RUNNING" and card_state(browser, "evil") == "FATAL"
    reason = browser.find_element(By.CSS_SELECTOR, 'article[data-model="evil"] .reason').text
    assert reason == "<script>alert(1)</script> in /tmp/<b>x</b>"
    assert browser.find_elements(By.CSS_SELECTOR, "article b, article script") == []
    daemon.models[1] = status("evil", "FATAL", reason=reason + " again", port=None)
    until(browser, 3, "the live update (through the script)",
          lambda d: d.find_element(By.CSS_SELECTOR, 'article[data-model="evil"] .reason').text == reason + " again")
    assert browser.find_elements(By.CSS_SELECTOR, "article b, article script") == []
    assert [e for e in browser.get_log("browser") if e["source"] == "javascript"] == []


def test_a_live_update_changes_only_what_differs(browser: Any, served: tuple[str, FakeDaemon]) -> None:
    """Live updates change a card's nodes in place: an operator copying a FATAL reason does not lose the
    selection when the restart count ticks, and a field found before an update is the same node after it,
    holding the new text (neither is stale)."""
    from selenium.webdriver.common.by import By

    base, daemon = served
    why = "cannot start: image sha256:0123 does not match the lock (make image)"
    daemon.models[1] = status("evil", "FATAL", reason=why, port=None, restarts=3)
    browser.get(base + "/ui/")
    reason = browser.find_element(By.CSS_SELECTOR, 'article[data-model="evil"] .reason')   # server-rendered
    field = '//article[@data-model="evil"]//dt[.="Restarts"]/following-sibling::dd[1]'
    restarts = browser.find_element(By.XPATH, field)
    browser.execute_script("getSelection().selectAllChildren(arguments[0])", reason)
    daemon.models[1] = status("evil", "FATAL", reason=why, port=None, restarts=4)
    until(browser, 3, "the live update", lambda d: d.find_element(By.XPATH, field).text.startswith("4"))
    assert restarts.text.startswith("4")        # the node found before, through the stream's updates
    assert reason.text == why
    assert browser.execute_script("return getSelection().toString()") == why
    browser.execute_script("getSelection().removeAllRanges()")


def test_without_the_token_stop_is_refused_and_the_page_says_how(browser: Any, served: tuple[str, FakeDaemon]) -> None:
    from selenium.webdriver.common.by import By

    base, daemon = served
    browser.delete_all_cookies()
    browser.get(base + "/ui/")
    time.sleep(1.2)                               # past a live update: the button is still the same one
    button = browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Stop m"]')
    button.click()
    try:
        until(browser, 3, "the refusal", lambda d: "llama-supervisorctl console" in d.find_element(By.ID, "notice").text)
    except Exception:
        print("NOTICE", repr(browser.find_element(By.ID, "notice").get_attribute("textContent")), browser.get_log("browser"))
        raise
    assert daemon.commands == []


def test_login_then_stop_by_keyboard_goes_through(browser: Any, served: tuple[str, FakeDaemon]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, daemon = served
    browser.get(f"{base}/ui/login?token={TOKEN}")
    assert browser.current_url == base + "/ui/"                     # the token left the address bar
    assert browser.find_elements(By.ID, "readonly") == []
    button = browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Stop m"]')
    button.send_keys(Keys.ENTER)
    until(browser, 3, "the stop queued", lambda d: StopModels(("m",)) in daemon.commands)
    browser.delete_all_cookies()


def test_a_request_appears_in_activity_live(browser: Any, served: tuple[str, FakeDaemon]) -> None:
    from selenium.webdriver.common.by import By

    base, _ = served
    browser.get(base + "/ui/activity")
    time.sleep(0.3)
    httpx.post(base + "/v1/completions", json={"model": "m", "prompt": "hi"}, timeout=5).raise_for_status()
    t0 = time.monotonic()
    until(browser, 1.0, "the request in Activity",
          lambda d: any("m" == c.text for c in d.find_elements(By.CSS_SELECTOR, "#done tr td:nth-child(2)")))
    assert time.monotonic() - t0 < 1.0


def test_a_log_line_appears_live_without_control_characters(browser: Any, served: tuple[str, FakeDaemon]) -> None:
    from selenium.webdriver.common.by import By

    base, daemon = served
    browser.get(f"{base}/ui/login?token={TOKEN}")
    browser.get(base + "/ui/logs?model=m")
    until(browser, 3, "the log's history", lambda d: "server is listening" in d.find_element(By.ID, "log").text)
    assert "\x1b" not in browser.find_element(By.ID, "log").get_attribute("textContent")
    daemon.log_chunks.append(b"slot 0: a new line <b>here</b>\n")
    until(browser, 3, "the new line", lambda d: "a new line <b>here</b>" in d.find_element(By.ID, "log").text)
    browser.delete_all_cookies()


def test_pages_fit_390_px(browser: Any, served: tuple[str, FakeDaemon]) -> None:
    base, _ = served
    browser.set_window_size(390, 844)
    try:
        for path in ("/ui/", "/ui/activity", "/ui/logs", "/ui/host"):
            browser.get(base + path)
            width = browser.execute_script("return document.documentElement.scrollWidth")
            assert width <= 390, (path, width)     # wide tables scroll inside their own box
    finally:
        browser.set_window_size(1280, 900)


def test_screenshots_of_each_page(browser: Any, served: tuple[str, FakeDaemon], tmp_path: Any) -> None:
    """Every page at desktop width and at 390 px; `make screenshots` (CONSOLE_SCREENSHOTS=1) writes them
    to docs/console/ for the README, otherwise they go to a temporary directory."""
    import os
    from pathlib import Path

    from .console_browser import SHOTS, screenshots

    base, daemon = served
    httpx.post(base + "/v1/completions", json={"model": "m", "prompt": "hi"}, timeout=5).raise_for_status()
    browser.get(f"{base}/ui/login?token={TOKEN}")
    out = SHOTS if os.environ.get("CONSOLE_SCREENSHOTS") else Path(tmp_path)
    screenshots(browser, base, {"models": "/ui/", "activity": "/ui/activity", "logs": "/ui/logs?model=m",
                                "host": "/ui/host"}, out)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"{page}-{w}.png" for page in ("models", "activity", "logs", "host") for w in ("desktop", "390px"))
    browser.delete_all_cookies()
