"""The gateway on the real engine, image and demo model: one endpoint, on-demand starts under a
memory budget, swaps, idle stops, restarts hidden from clients, errors in OpenAI's shape.

One daemon serves the module, with a 1.7 GiB budget:
    always:    steady (300m, parallel 2)             - the SIGKILL-under-load target
    on-demand: big-a, big-b (1g each: one at a time), small (300m, idle_ttl 3 s), burst (300m),
               narrow (300m, max_queue 1), huge (4g: never fits), broken (wrong sha256: FATAL)
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from .daemon_harness import Daemon, identity, instance_for, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker

LOAD_TIMEOUT = 120.0
WRONG_SHA = "dead" * 16


class Fleet:
    def __init__(self, directory: Path, demo: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.dir, self.demo = directory, demo
        self.names = {k: f"gw{tag}-{k}" for k in
                      ("steady", "big-a", "big-b", "small", "burst", "narrow", "huge", "broken")}
        on_demand = "lifecycle: on-demand\n"
        self.write("steady", memory="300m", parallel=2, serving=f"aliases: [gw{tag}-always]\n")
        self.write("big-a", serving=on_demand + f"aliases: [gw{tag}-a]\n")
        self.write("big-b", serving=on_demand)
        self.write("small", memory="300m", serving=on_demand + "idle_ttl: 3\n")
        self.write("burst", memory="300m", serving=on_demand)
        self.write("narrow", memory="300m", serving=on_demand + "max_queue: 1\n")
        self.write("huge", memory="4g", serving=on_demand)
        self.write("broken", memory="300m", serving=on_demand, sha=WRONG_SHA)

    def write(self, key: str, *, memory: str = "1g", parallel: int = 1, serving: str = "",
              sha: str | None = None) -> None:
        text = model_yaml(self.names[key], None, self.demo, sha or self.demo.parent.name, memory=memory,
                          parallel=parallel, serving=serving)
        (self.dir / f"{key}.yaml").write_text(text)

    def __getitem__(self, key: str) -> str:
        return self.names[key]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
       image_record: object, demo_model: Path) -> Iterator[tuple[Fleet, Daemon]]:
    fleet = Fleet(tmp_path_factory.mktemp("gateway"), demo_model)
    d = Daemon(fleet.dir, extra=["--memory-budget", "1700m"]).start()
    try:
        wait_for(lambda: _state(d, fleet["steady"]) == "RUNNING", LOAD_TIMEOUT, "the always-on model running")
        yield fleet, d
    except AssertionError:
        print(d.dump())
        raise
    finally:
        if d.proc and d.proc.poll() is None:
            d.terminate()
        remove_models(docker_client, list(fleet.names.values()))


def _models(d: Daemon) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{d.gateway}/v1/models", timeout=5)
    r.raise_for_status()
    return {m["id"]: m for m in r.json()["data"]}


def _state(d: Daemon, name: str) -> str | None:
    try:
        return _models(d).get(name, {}).get("state")
    except httpx.HTTPError:
        return None


def chat(d: Daemon, model: str, *, max_tokens: int = 4, timeout: float = LOAD_TIMEOUT) -> httpx.Response:
    return httpx.post(f"{d.gateway}/v1/chat/completions", timeout=timeout, json={
        "model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Say hi"}]})


def events(client: docker.DockerClient, d: Daemon, since: float, actions: set[str]) -> list[tuple[int, str, str]]:
    """(timeNano, action, model) of this daemon's containers since `since` (wall clock), in order."""
    until = time.time() + 0.5
    found = []
    for e in client.events(since=since, until=until, decode=True,
                           filters={"type": "container", "label": f"io.llama-supervisor.instance={instance_for(d.manifests)}"}):
        if e.get("Action") in actions:
            found.append((e["timeNano"], e["Action"], e["Actor"]["Attributes"].get("io.llama-supervisor.model", "")))
    return sorted(found)


def test_models_and_aliases_are_listed_with_state_and_lifecycle(gw: tuple[Fleet, Daemon]) -> None:
    fleet, d = gw
    models = _models(d)
    assert models[fleet["steady"]]["state"] == "RUNNING" and models[fleet["steady"]]["lifecycle"] == "always"
    assert models[fleet["big-a"]]["lifecycle"] == "on-demand"
    assert models[fleet["big-a"]]["state"] == "STOPPED", "an on-demand model waits for its first request"
    alias = models[fleet["big-a"].replace("big-a", "a")]
    assert alias["alias_of"] == fleet["big-a"]
    assert httpx.get(f"{d.gateway}/health", timeout=5).json()["status"] == "ok"


def test_request_for_a_then_b_stops_a_before_starting_b(gw: tuple[Fleet, Daemon],
                                                         docker_client: docker.DockerClient) -> None:
    fleet, d = gw
    a, b = fleet["big-a"], fleet["big-b"]
    since = time.time()
    ra = chat(d, fleet["big-a"].replace("big-a", "a"))         # by alias
    assert ra.status_code == 200, ra.text
    assert ra.json()["choices"][0]["message"]["role"] == "assistant"
    rb = chat(d, b)
    assert rb.status_code == 200, rb.text
    seen = events(docker_client, d, since, {"start", "die"})
    a_started = [t for t, act, m in seen if m == a and act == "start"]
    a_died = [t for t, act, m in seen if m == a and act == "die"]
    b_started = [t for t, act, m in seen if m == b and act == "start"]
    assert a_started and a_died and b_started, seen
    assert a_started[0] < a_died[0] < b_started[0], f"A must stop before B starts (budget fits one): {seen}"
    assert _state(d, a) == "STOPPED" and _state(d, b) == "RUNNING"


def test_concurrent_requests_for_a_and_b_are_all_answered(gw: tuple[Fleet, Daemon]) -> None:
    fleet, d = gw
    names = [fleet["big-a"], fleet["big-b"]] * 3
    with ThreadPoolExecutor(len(names)) as pool:
        replies = list(pool.map(lambda m: chat(d, m), names))
    assert [r.status_code for r in replies] == [200] * len(names), [r.text for r in replies if r.status_code != 200]


def test_burst_of_50_during_a_cold_start_starts_one_container(gw: tuple[Fleet, Daemon],
                                                              docker_client: docker.DockerClient) -> None:
    fleet, d = gw
    m = fleet["burst"]
    assert _state(d, m) == "STOPPED"
    since = time.time()
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda _: chat(d, m, max_tokens=2), range(50)))
    codes = [r.status_code for r in replies]
    assert codes == [200] * 50, [r.text for r in replies if r.status_code != 200][:3]
    starts = [e for e in events(docker_client, d, since, {"create", "start"}) if e[2] == m]
    assert [act for _, act, _ in starts] == ["create", "start"], starts


def test_idle_model_is_stopped_after_its_ttl_and_started_by_the_next_request(gw: tuple[Fleet, Daemon]) -> None:
    fleet, d = gw
    m = fleet["small"]
    assert chat(d, m).status_code == 200
    t_answered = time.monotonic()
    wait_for(lambda: _state(d, m) == "STOPPED", 30, "the idle model stopped")
    assert time.monotonic() - t_answered >= 2.5, "stopped before its 3 s idle_ttl ran out"
    d.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == m and r.get("to") == "STOPPING"
               and "idle" in r.get("reason", ""), 5, "the idle stop logged with its reason")
    r = chat(d, m)
    assert r.status_code == 200, r.text


def test_unknown_model_is_404_naming_the_models(gw: tuple[Fleet, Daemon]) -> None:
    fleet, d = gw
    r = chat(d, "no-such-model")
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and fleet["steady"] in err["message"]


def test_model_that_cannot_fit_is_refused_at_once_with_need_and_budget(gw: tuple[Fleet, Daemon]) -> None:
    fleet, d = gw
    t0 = time.monotonic()
    r = chat(d, fleet["huge"])
    assert r.status_code == 503, r.text
    assert time.monotonic() - t0 < 10, "refused at once, not after a wait"
    err = r.json()["error"]
    assert err["code"] == "insufficient_memory"
    assert "4096 MiB" in err["message"] and "1700 MiB" in err["message"], err["message"]
    assert _state(d, fleet["huge"]) == "STOPPED"


def test_fatal_model_is_503_with_the_reason(gw: tuple[Fleet, Daemon]) -> None:
    fleet, d = gw
    r = chat(d, fleet["broken"])
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "model_fatal" and "verification failed" in err["message"], err
    again = chat(d, fleet["broken"])
    assert again.status_code == 503 and "FATAL" in again.json()["error"]["message"]


def test_full_queue_is_429_with_retry_after(gw: tuple[Fleet, Daemon]) -> None:
    fleet, d = gw
    m = fleet["narrow"]
    assert _state(d, m) == "STOPPED"
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: chat(d, m), range(4)))
    codes = sorted(r.status_code for r in replies)
    assert 200 in codes and 429 in codes, codes
    limited = next(r for r in replies if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "queue_full"


def test_client_disconnect_mid_stream_frees_the_slot(gw: tuple[Fleet, Daemon]) -> None:
    fleet, d = gw
    m = fleet["small"]
    body = {"model": m, "max_tokens": 4000, "stream": True, "messages": [{"role": "user", "content": "Count on"}]}
    with httpx.stream("POST", f"{d.gateway}/v1/chat/completions", json=body, timeout=LOAD_TIMEOUT) as r:
        assert r.status_code == 200
        chunks = 0
        for line in r.iter_lines():
            chunks += line.startswith("data: ")
            if chunks >= 3:
                break                                   # hang up mid-stream

    def idle() -> bool:
        slots = httpx.get(f"{d.gateway}/upstream/{m}/slots", timeout=5).json()
        return not any(s.get("is_processing") for s in slots)

    wait_for(idle, 10, "the llama-server slot freed after the client hung up")
    t0 = time.monotonic()
    r2 = chat(d, m, max_tokens=2)
    assert r2.status_code == 200
    print(f"\nnext request after the hang-up answered in {time.monotonic() - t0:.2f}s")


def test_sigkill_under_load_loses_no_request_that_was_not_in_flight(gw: tuple[Fleet, Daemon],
                                                                    docker_client: docker.DockerClient) -> None:
    fleet, d = gw
    m = fleet["steady"]
    results: list[tuple[float, float, int, str]] = []       # (sent, done, status, body)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=LOAD_TIMEOUT) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post(f"{d.gateway}/v1/chat/completions", json={
                        "model": m, "max_tokens": 6, "messages": [{"role": "user", "content": "Say hi"}]})
                    results.append((t0, time.monotonic(), r.status_code, r.text))
                except httpx.HTTPError as e:
                    results.append((t0, time.monotonic(), 0, repr(e)))

    stream_events: list[str] = []

    def streamer() -> None:
        body = {"model": m, "max_tokens": 3000, "stream": True, "messages": [{"role": "user", "content": "Count"}]}
        with httpx.stream("POST", f"{d.gateway}/v1/chat/completions", json=body, timeout=LOAD_TIMEOUT) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    stream_events.append(line[6:])

    threads = [threading.Thread(target=client) for _ in range(3)] + [threading.Thread(target=streamer)]
    for t in threads:
        t.start()
    time.sleep(3)
    cid, _ = identity(docker_client, m)
    t_kill = time.monotonic()
    docker_client.api.kill(cid, "SIGKILL")
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(LOAD_TIMEOUT)
    d.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == m and r.get("to") == "RUNNING",
               5, "the killed model running again", since=t_kill)
    after = [r for r in results if r[0] >= t_kill]
    in_flight = [r for r in results if r[0] < t_kill <= r[1]]
    assert after, "no request was sent after the kill"
    assert [r[2] for r in after] == [200] * len(after), [r[3] for r in after if r[2] != 200]
    for _, _, status, text in in_flight:     # answered after all (re-sent once), or a clean OpenAI error
        assert status == 200 or (status == 502 and json.loads(text)["error"]["code"] == "upstream_error"), text
    assert stream_events and stream_events[-1] == "[DONE]", stream_events[-3:]
    assert any('"error"' in e for e in stream_events), "the cut stream ends with an SSE error event"
    print(f"\nSIGKILL under load: {len(after)} requests after the kill, all 200; {len(in_flight)} in flight:"
          f" {[r[2] for r in in_flight]}")


def test_a_request_right_after_a_sigkill_waits_for_the_restart_not_for_a_fixed_pause(
        gw: tuple[Fleet, Daemon], docker_client: docker.DockerClient) -> None:
    """The request meets the dead container (its port's proxy closes the connection) before the engine's
    `die` reaches the daemon (0.12-0.17 s after the kill here). It is sent to the dead model once, then waits for the restart and
    goes out as the model turns RUNNING: not a second time to the dead one, not after a sleep past RUNNING.
    Without the loop publishing the routes before its actions, the dead model's route said RUNNING through
    the engine's start in place, and the request went out a second time then (+0.27 s), 3 times in 3."""
    fleet, d = gw
    m = fleet["steady"]
    wait_for(lambda: _state(d, m) == "RUNNING", LOAD_TIMEOUT, "the always-on model running")
    assert chat(d, m).status_code == 200
    # past stable_after_s (10 s) since it last turned RUNNING: the crash is restarted at once, in place,
    # the engine's start then blocking the loop while the request waits
    t_up = max(t for t, e in list(d.lines) if e.get("event") == "transition" and e.get("model") == m
               and e.get("to") == "RUNNING")
    time.sleep(max(0.0, t_up + 10.5 - time.monotonic()))
    cid, _ = identity(docker_client, m)
    pid = int(docker_client.api.inspect_container(cid)["State"]["Pid"])
    body = {"model": m, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi"}]}
    with httpx.Client(timeout=LOAD_TIMEOUT) as c:      # made before the kill: the request goes out at once
        t_kill = time.monotonic()
        # the signal itself, as the OOM killer sends it: the engine's kill call returns only once it saw the exit
        os.kill(pid, signal.SIGKILL)
        r = c.post(f"{d.gateway}/v1/chat/completions", json=body)
        t_done = time.monotonic()
    assert r.status_code == 200, r.text
    t_run, _ = d.wait_log(lambda e: e.get("event") == "transition" and e.get("model") == m
                          and e.get("to") == "RUNNING", 5, "the killed model running again", since=t_kill)
    after = [(t, e) for t, e in list(d.lines) if t >= t_kill and e.get("model") == m]
    seen = [(round(t - t_kill, 3), e.get("event"), e.get("to")) for t, e in after]
    assert not any(e.get("to") == "BACKOFF" for _, e in after), f"not restarted at once, in place: {seen}"
    unreachable = [e for _, e in after if e.get("event") == "model unreachable: waiting for it, then sending again"]
    assert len(unreachable) == 1, f"sent to the dead model {len(unreachable)} times: {seen}"
    assert t_done - t_run < 0.5, f"answered {t_done - t_run:.2f} s after RUNNING (a 4-token answer takes ~0.1 s)"


def test_official_openai_client_lists_chats_and_streams(gw: tuple[Fleet, Daemon]) -> None:
    import openai

    fleet, d = gw
    client = openai.OpenAI(base_url=f"{d.gateway}/v1", api_key="unused", timeout=LOAD_TIMEOUT)
    ids = {m.id for m in client.models.list()}
    assert fleet["steady"] in ids and fleet["big-a"] in ids
    reply = client.chat.completions.create(model=fleet["steady"], max_tokens=4,
                                           messages=[{"role": "user", "content": "Say hi"}])
    assert reply.choices[0].message.role == "assistant"
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=fleet["steady"], max_tokens=8, stream=True, messages=[{"role": "user", "content": "Say hi"}])
        if c.choices]
    assert len(parts) >= 2


def test_upstream_passthrough_reaches_a_running_model_only(gw: tuple[Fleet, Daemon]) -> None:
    fleet, d = gw
    r = httpx.get(f"{d.gateway}/upstream/{fleet['steady']}/health", timeout=5)
    assert r.status_code == 200 and r.json().get("status") == "ok"
    stopped = httpx.get(f"{d.gateway}/upstream/{fleet['huge']}/health", timeout=5)
    assert stopped.status_code == 503 and stopped.json()["error"]["code"] == "model_not_running"
