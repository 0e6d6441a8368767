"""The console in a real headless browser against the real daemon, engine, image and demo model
(issue 18's proof). One daemon for the module:
    steady:  always-on, RUNNING                    - listed, stopped from the page
    lazy:    on-demand, STOPPED until asked        - started from the page, then unloaded from it
    evil:    its model file is named <img src=x onerror=alert(1)>.gguf and pinned to a wrong SHA-256,
             so its FATAL reason quotes that name  - rendered as text
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from .console_browser import browser, card_state, until  # noqa: F401  (a fixture)
from .daemon_harness import Daemon, container, instance_for, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker
LOAD_TIMEOUT = 120.0
START_TIMEOUT = 90.0    # health.start_timeout: the default (~13 s for the demo model) is missed on a loaded host
EVIL = "<img src=x onerror=alert(1)>"


class Fleet:
    def __init__(self, directory: Path, demo: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.dir = directory
        self.demo_sha = demo.parent.name
        self.steady, self.lazy, self.evil = f"ui{tag}-steady", f"ui{tag}-lazy", f"ui{tag}-evil"
        (directory / "steady.yaml").write_text(model_yaml(self.steady, None, demo, demo.parent.name, memory="300m",
                                                          start_timeout=START_TIMEOUT))
        (directory / "lazy.yaml").write_text(model_yaml(self.lazy, None, demo, demo.parent.name, memory="300m",
                                                        serving="lifecycle: on-demand\n", start_timeout=START_TIMEOUT))
        files = directory.parent / f"{directory.name}-files"
        files.mkdir()
        evil_file = files / f"{EVIL}.gguf"
        shutil.copyfile(demo, evil_file)
        (directory / "evil.yaml").write_text(model_yaml(self.evil, None, evil_file, "dead" * 16, memory="300m"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, image_record: object,
          demo_model: Path) -> Iterator[tuple[Fleet, Daemon, str]]:
    f = Fleet(tmp_path_factory.mktemp("console"), demo_model)
    d = Daemon(f.dir).start()
    try:
        wait_for(lambda: _state(d, f.steady) == "RUNNING", LOAD_TIMEOUT, "the always-on model running")
        ctl = Path(sys.executable).with_name("llama-supervisorctl")
        out = subprocess.run([str(ctl), "--socket", str(d.sockdir / "ctl.sock"), "console"], capture_output=True,
                             text=True, timeout=30, check=True)
        url = out.stdout.strip()
        assert url.startswith(f"{d.gateway}/ui/login?token="), url
        yield f, d, url
    except AssertionError:
        print(d.dump())
        raise
    finally:
        if d.proc and d.proc.poll() is None:
            d.terminate()
        remove_models(docker_client, [f.steady, f.lazy, f.evil])


def _state(d: Daemon, name: str) -> str | None:
    try:
        r = httpx.get(f"{d.gateway}/v1/models/{name}", timeout=5)
    except httpx.HTTPError:
        return None
    return r.json().get("state") if r.status_code == 200 else None


def test_the_page_lists_the_models_with_their_states_and_the_csp(browser: Any, fleet: tuple[Fleet, Daemon, str]) -> None:
    f, d, _ = fleet
    r = httpx.get(f"{d.gateway}/ui/", timeout=5)
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    browser.get(f"{d.gateway}/ui/")
    assert card_state(browser, f.steady) == "RUNNING"
    assert card_state(browser, f.lazy) == "STOPPED"


def test_a_manifest_value_holding_markup_renders_as_text(browser: Any, fleet: tuple[Fleet, Daemon, str]) -> None:
    from selenium.webdriver.common.by import By

    f, d, _ = fleet
    browser.get(f"{d.gateway}/ui/")
    until(browser, LOAD_TIMEOUT, "the evil model FATAL", lambda b: card_state(b, f.evil) == "FATAL")
    reason = browser.find_element(By.CSS_SELECTOR, f'article[data-model="{f.evil}"] .reason').text
    assert EVIL in reason
    assert browser.find_elements(By.CSS_SELECTOR, "article img, article script") == []


def test_without_the_token_actions_are_refused_and_the_page_says_how(browser: Any,
                                                                      fleet: tuple[Fleet, Daemon, str]) -> None:
    from selenium.webdriver.common.by import By

    f, d, _ = fleet
    browser.delete_all_cookies()
    browser.get(f"{d.gateway}/ui/")
    assert "llama-supervisorctl console" in browser.find_element(By.ID, "readonly").text
    browser.find_element(By.CSS_SELECTOR, f'button[aria-label="Stop {f.steady}"]').click()
    until(browser, 3, "the refusal", lambda b: "llama-supervisorctl console" in b.find_element(By.ID, "notice").text)
    assert httpx.post(f"{d.gateway}/ui/api/models/{f.steady}/stop", json={}, timeout=5).status_code == 401
    assert _state(d, f.steady) == "RUNNING"


def test_a_request_appears_in_activity_within_a_second(browser: Any, fleet: tuple[Fleet, Daemon, str]) -> None:
    from selenium.webdriver.common.by import By

    f, d, _ = fleet
    browser.get(f"{d.gateway}/ui/activity")
    time.sleep(0.5)
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{d.gateway}/v1/completions",
                        "-H", "content-type: application/json",
                        "-d", f'{{"model": "{f.steady}", "prompt": "Hello", "max_tokens": 4}}'],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout == "200", r.stderr
    t0 = time.monotonic()
    until(browser, 1.0, "the request in Activity", lambda b: any(
        c.text == f.steady for c in b.find_elements(By.CSS_SELECTOR, "#done tr td:nth-child(2)")))
    assert time.monotonic() - t0 <= 1.0


def test_a_log_line_appears_live(browser: Any, fleet: tuple[Fleet, Daemon, str]) -> None:
    from selenium.webdriver.common.by import By

    f, d, url = fleet
    browser.get(url)
    browser.get(f"{d.gateway}/ui/logs?model={f.steady}")
    until(browser, 5, "the log's history", lambda b: b.find_element(By.ID, "log").text.strip() != "")
    before = browser.find_element(By.ID, "log").text.count("\n")
    httpx.post(f"{d.gateway}/v1/completions", json={"model": f.steady, "prompt": "Hi", "max_tokens": 2}, timeout=60)
    until(browser, 5, "a new log line", lambda b: b.find_element(By.ID, "log").text.count("\n") > before)


def _field(browser: Any, model: str, label: str) -> str:
    from selenium.webdriver.common.by import By

    found = browser.find_elements(By.XPATH, f'//article[@data-model="{model}"]//dt[.="{label}"]/following-sibling::dd[1]')
    return str(found[0].text) if found else ""


def test_screenshots_of_each_page(browser: Any, fleet: tuple[Fleet, Daemon, str], tmp_path: Path) -> None:
    """Every page at desktop width and at 390 px, of this real fleet (one running, one on-demand stopped, one
    FATAL) after a request; `make screenshots` (CONSOLE_SCREENSHOTS=1) writes them to docs/console/."""
    import os

    from .console_browser import SHOTS, screenshots

    f, d, url = fleet
    httpx.post(f"{d.gateway}/v1/chat/completions", timeout=60, json={
        "model": f.steady, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello"}]}).raise_for_status()
    browser.get(url)
    out = SHOTS if os.environ.get("CONSOLE_SCREENSHOTS") else tmp_path
    screenshots(browser, d.gateway, {"models": "/ui/", "activity": "/ui/activity", "logs": f"/ui/logs?model={f.steady}",
                                     "host": "/ui/host"}, out)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"{page}-{w}.png" for page in ("models", "activity", "logs", "host") for w in ("desktop", "390px"))


def test_start_and_stop_from_the_page(browser: Any, fleet: tuple[Fleet, Daemon, str],
                                     docker_client: docker.DockerClient) -> None:
    from selenium.webdriver.common.by import By

    f, d, url = fleet
    browser.get(url)                                         # the login URL: a session cookie, then /ui/
    assert browser.current_url == f"{d.gateway}/ui/"
    browser.find_element(By.CSS_SELECTOR, f'button[aria-label="Start {f.lazy}"]').click()
    until(browser, LOAD_TIMEOUT, "the on-demand model RUNNING", lambda b: card_state(b, f.lazy) == "RUNNING")
    r = httpx.post(f"{d.gateway}/v1/completions", timeout=60,      # a slot holding a prompt: the unload saves it
                   json={"model": f.lazy, "prompt": "The quick brown fox jumps over the lazy dog", "max_tokens": 4})
    assert r.status_code == 200, r.text
    verified = _field(browser, f.lazy, "Verified")
    assert f"model file SHA-256 {f.demo_sha[:12]}" in verified and "checked before" in verified, verified
    t0 = time.monotonic()
    browser.find_element(By.CSS_SELECTOR, f'button[aria-label="Stop {f.steady}"]').click()
    until(browser, 30.0, "STOPPED on the page", lambda b: card_state(b, f.steady) == "STOPPED")
    shown = time.monotonic() - t0

    def logged(to: str) -> float:
        found = d.find(lambda r: r.get("model") == f.steady and r.get("to") == to, since=t0)
        return found[0] - t0 if found else float("nan")

    took = (f"STOPPED on the page {shown:.2f} s after the click; the daemon logged STOPPING at {logged('STOPPING'):.2f} s"
            f" and STOPPED at {logged('STOPPED'):.2f} s (between them: the engine's stop, llama-server's exit)")
    print(took)
    assert shown <= 2.0, took
    c = container(docker_client, f.steady, instance_for(f.dir))
    c.reload()
    assert c.status != "running"
    browser.find_element(By.CSS_SELECTOR, f'button[aria-label="Unload {f.lazy}"]').click()
    until(browser, 10.0, "the on-demand model unloaded", lambda b: card_state(b, f.lazy) == "STOPPED")
    kv = until(browser, 5.0, "its KV cache kept, on its card", lambda b: next(
        (t for t in [_field(b, f.lazy, "KV cache kept")] if t[:1].isdigit() and not t.startswith("0 ")), None))
    print(f"Unload {f.lazy}: KV cache kept: {kv}")
    c = container(docker_client, f.lazy, instance_for(f.dir))
    c.reload()
    assert c.status != "running"
    assert browser.find_elements(By.CSS_SELECTOR, f'button[aria-label="Unload {f.steady}"]') == [], \
        "an always model offers no Unload"
