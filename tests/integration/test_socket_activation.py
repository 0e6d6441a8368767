"""Socket activation on the real engine, image and model (issue 21), with `systemd-socket-activate`: it holds
the gateway's and the control socket's listening sockets and passes them through LISTEN_FDS exactly as
systemd does; the harness's loop under it starts the daemon again whenever it exits.

(a) a connection made while no daemon runs is answered once one starts;
(b) a daemon killed with kill -9 and started again under the same sockets refuses no connection;
(c) SIGTERM with a stream in flight: the stream completes, then the daemon exits, and a request made
    during that drain waits for the next daemon instead of being refused.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from .daemon_harness import Daemon, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker

LOAD_TIMEOUT = 120.0


@pytest.fixture
def activated(tmp_path: Path, docker_client: docker.DockerClient, image_record: object,
              demo_model: Path) -> Iterator[tuple[Daemon, str]]:
    if shutil.which("systemd-socket-activate") is None:
        reason = "systemd-socket-activate not on PATH (fix: 'make tools' as root: apt-get install systemd)"
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {reason}")
        pytest.skip(reason)
    name = f"sa{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.yaml").write_text(model_yaml(name, None, demo_model, demo_model.parent.name,
                                                       memory="300m", parallel=2))
    d = Daemon(tmp_path, socket_activated=True, extra=["--shutdown-grace", "240"]).start()
    d.wait_log(lambda r: str(r.get("event", "")).startswith(f"Listening on 127.0.0.1:{d.gateway_port}"), 10,
               "systemd-socket-activate listening")
    try:
        yield d, name
    finally:
        try:
            d.terminate(60)
        except Exception:
            d.kill9()
        remove_models(docker_client, [name])


def chat(d: Daemon, model: str, *, max_tokens: int = 2, timeout: float = LOAD_TIMEOUT) -> httpx.Response:
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=timeout) as c:  # a new connection
        return c.post(f"{d.gateway}/v1/chat/completions", json=body)


def warm(d: Daemon, model: str) -> None:
    """Until the first daemon runs and the model answers (a loaded host may take longer than one start timeout)."""
    try:
        wait_for(lambda: chat(d, model).status_code == 200, 3 * LOAD_TIMEOUT, f"{model} answering")
    except AssertionError:
        print(d.dump())
        raise


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_a_connection_made_before_any_daemon_runs_is_answered(activated: tuple[Daemon, str]) -> None:
    d, model = activated
    assert d.proc is not None
    assert comm(d.proc.pid).startswith("systemd-socket") and not d.find(lambda r: r.get("event") == "loop starting"), \
        "a daemon runs already"
    r = chat(d, model)                      # this connection is what starts the first daemon
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    _, rec = d.wait_log(lambda r: r.get("event") == "socket activation: inherited listening sockets", 5,
                        "the daemon took the sockets")
    assert (rec["gateway"], rec["control"]) == (True, True)


def test_kill9_and_restart_under_the_same_socket_refuses_nothing(activated: tuple[Daemon, str]) -> None:
    d, model = activated
    warm(d, model)
    outcomes: list[tuple[float, str]] = []       # (when the request started, how it ended)
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            t = time.monotonic()
            try:
                r = chat(d, model, timeout=60)
                outcomes.append((t, "ok" if r.status_code == 200 else f"status {r.status_code}: {r.text[:200]}"))
            except httpx.ConnectError as e:       # ECONNREFUSED (and any other failure to connect)
                outcomes.append((t, f"refused: {e}"))
            except httpx.HTTPError as e:         # cut in flight by the kill
                outcomes.append((t, f"cut: {type(e).__name__}"))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        wait_for(lambda: sum(o == "ok" for _, o in outcomes) >= 3, 60, "3 answers before the kill")
        old = d.kill9_daemon()
        killed = time.monotonic()
        wait_for(lambda: d.daemon_pid() != old, 60, "the next daemon")
        wait_for(lambda: sum(o == "ok" for t, o in outcomes if t > killed) >= 5, 120, "5 answers after the kill")
    finally:
        stop.set()
        thread.join(70)
    refused = [o for _, o in outcomes if o.startswith("refused")]
    after = [o for t, o in outcomes if t > killed]
    assert refused == [], outcomes
    assert all(o == "ok" for o in after), after    # sent after the kill: waited in the queue, answered
    cut = [o for t, o in outcomes if t <= killed and o != "ok"]
    assert len(cut) <= 1 and all(o.startswith("cut: ") for o in cut), outcomes    # the one in flight at the kill


def test_sigterm_lets_the_stream_in_flight_finish_then_exits(activated: tuple[Daemon, str]) -> None:
    d, model = activated
    warm(d, model)
    pid = d.daemon_pid()
    lines: list[str] = []
    ended: list[float] = []
    failed: list[BaseException] = []

    def streamer() -> None:
        body = {"model": model, "max_tokens": 200, "ignore_eos": True, "stream": True,
                "messages": [{"role": "user", "content": "Count to a thousand."}]}
        try:
            with httpx.stream("POST", f"{d.gateway}/v1/chat/completions", json=body, timeout=LOAD_TIMEOUT) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        lines.append(line[6:])
        except httpx.HTTPError as e:
            failed.append(e)
        ended.append(time.monotonic())

    gone: list[float] = []

    def watch() -> None:
        while Path(f"/proc/{pid}").exists():
            time.sleep(0.01)
        gone.append(time.monotonic())

    thread = threading.Thread(target=streamer, daemon=True)
    thread.start()
    threading.Thread(target=watch, daemon=True).start()
    wait_for(lambda: len(lines) >= 3, LOAD_TIMEOUT, "the stream under way")
    since = time.monotonic()
    os.kill(pid, 15)
    _, rec = d.wait_log(lambda r: r.get("event") == "gateway: not accepting; letting requests in flight finish",
                        10, "the drain", since=since)
    assert rec["connections"] >= 1 and rec["socket"] == "inherited: kept by the service manager", rec
    # A request made during the drain is not refused: it waits in the kernel's queue for the next daemon.
    during = chat(d, model)
    assert during.status_code == 200, during.text
    thread.join(3 * LOAD_TIMEOUT)
    drained = [r for _, r in d.lines if str(r.get("event", "")).startswith("gateway")]
    assert failed == [] and lines[-1] == "[DONE]", (failed, lines[-3:], drained)
    assert len(lines) >= 200                       # every token came (ignore_eos): nothing was cut
    wait_for(lambda: gone, 30, f"daemon {pid} to exit")
    assert ended[0] < gone[0], (ended, gone)         # it exited after the stream ended, not before
