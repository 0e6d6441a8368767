"""Swap-aware scheduling (issue 17 §2) and the idle-TTL race (§4), each beside its floor, one run.

    python -m bench.run --only swaps-sched --out docs/BENCHMARKS.md [--quick]

Two on-demand models A and B (the demo model under two names, 1g each) under a 1500m budget: room
for one. For `--swap-policy batch` and then `fifo` (one daemon each, same manifests):

- 4 clients, each alternating A and B for 10 requests (clients 0 and 2 start with A, 1 and 3 with B,
  0.1 s apart), one request at a time: the daemon's swaps (its "swap" log lines), the workload's total
  time and each request's latency (its wait for the model plus a 2-token answer);
- the floor: one swap (a request for the model not loaded, the other one idle), median of 3.

Then the idle-TTL race: a model with idle_ttl 2 s; the moment the daemon logs the idle stop, a request
for it: its latency, beside its floor, a graceful stop (the daemon's STOPPING -> STOPPED) plus a cold
start (a request for the stopped model), medians of 3.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import httpx

from bench import live
from bench.stats import of
from tests.integration.daemon_harness import Daemon, model_yaml, remove_models, wait_for

if TYPE_CHECKING:
    from bench.run import Report

BUDGET = "1500m"
MAX_SWAP_WAIT_S = 10.0
TIMEOUT_S = 180.0


def _manifest(name: str, demo: Path, serving: str) -> str:
    """Default probes; a start timeout a loaded host cannot miss (its start is what is measured)."""
    text = model_yaml(name, None, demo, demo.parent.name, memory="1g", fast_probes=False, serving=serving)
    return text.replace("resources:\n", "health:\n  start_timeout: 120\nresources:\n", 1)


def _chat(http: httpx.Client, d: Daemon, model: str) -> float:
    t0 = time.perf_counter()
    r = http.post(f"{d.gateway}/v1/chat/completions", json={
        "model": model, "max_tokens": 2, "temperature": 0, "messages": [{"role": "user", "content": "Say hi"}]})
    r.raise_for_status()
    return time.perf_counter() - t0


def _state(d: Daemon, name: str) -> str | None:
    try:
        r = httpx.get(f"{d.gateway}/v1/models", timeout=5)
        return {m["id"]: m for m in r.json()["data"]}.get(name, {}).get("state")
    except (httpx.HTTPError, ValueError):
        return None


def _events(d: Daemon, event: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
    with d._lock:
        return [(t, rec) for t, rec in d.lines if t >= since and rec.get("event") == event]


def _workload(d: Daemon, a: str, b: str, *, clients: int, per_client: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        time.sleep(0.1 * i)
        with httpx.Client(timeout=TIMEOUT_S) as http:
            for j in range(per_client):
                try:
                    s = _chat(http, d, (a, b)[(i + j) % 2])
                except httpx.HTTPError as e:
                    errors.append(str(e))
                    continue
                with lock:
                    latencies.append(s)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S * per_client)
    if errors:
        raise SystemExit(f"swaps-sched: {len(errors)} requests failed: {errors[:3]}")
    return time.perf_counter() - t0, latencies


def _one_policy(policy: str, demo: Path, client: docker.DockerClient, *, per_client: int, floors: int,
                ) -> tuple[int, float, list[float], list[float]]:
    """(swaps, total time, latencies, single-swap floors) for one daemon under `policy`."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"bench{tag}-a", f"bench{tag}-b"
    with tempfile.TemporaryDirectory(prefix=f"swaps-{policy}-") as tmp:
        for name in (a, b):
            Path(tmp, f"{name}.yaml").write_text(_manifest(name, demo, "lifecycle: on-demand\n"))
        d = Daemon(Path(tmp), extra=["--memory-budget", BUDGET, "--swap-policy", policy,
                                     "--max-swap-wait", str(MAX_SWAP_WAIT_S)]).start()
        try:
            wait_for(lambda: _state(d, a) == "STOPPED", 60, "the gateway up")
            total, latencies = _workload(d, a, b, clients=4, per_client=per_client)
            swaps = len(_events(d, "swap"))
            one: list[float] = []
            with httpx.Client(timeout=TIMEOUT_S) as http:
                _chat(http, d, a)                       # a loaded and idle
                for i in range(floors):
                    one.append(_chat(http, d, (b, a)[i % 2]))
            return swaps, total, latencies, one
        finally:
            d.terminate()
            remove_models(client, [a, b])


def _ttl_race(demo: Path, client: docker.DockerClient, *, runs: int) -> tuple[list[float], list[float], list[float]]:
    """(race latencies, graceful stops, cold starts)."""
    tag = uuid.uuid4().hex[:6]
    m = f"bench{tag}-ttl"
    with tempfile.TemporaryDirectory(prefix="swaps-ttl-") as tmp:
        Path(tmp, f"{m}.yaml").write_text(_manifest(m, demo, "lifecycle: on-demand\nidle_ttl: 2\n"))
        d = Daemon(Path(tmp), extra=["--memory-budget", BUDGET]).start()
        race, stops, colds = [], [], []
        try:
            wait_for(lambda: _state(d, m) == "STOPPED", 60, "the gateway up")
            with httpx.Client(timeout=TIMEOUT_S) as http:
                for _ in range(runs):
                    colds.append(_chat(http, d, m))     # a cold start: the model is stopped
                    since = time.monotonic()
                    t, _rec = wait_for(lambda: next(iter(_events(d, "idle: stopping on-demand model", since)), None),
                                       30, "the idle stop", step=0.002)
                    race.append(_chat(http, d, m))      # arrives as the stop begins
                    down = [t2 for t2, rec in _events(d, "transition", t)
                            if rec.get("model") == m and rec.get("to") == "STOPPED"]
                    up = [t2 for t2, rec in _events(d, "transition", t)
                          if rec.get("model") == m and rec.get("to") == "STOPPING"]
                    if down and up:
                        stops.append(down[0] - up[0])
                    wait_for(lambda: _state(d, m) == "STOPPED", 30, "stopped again")
        finally:
            d.terminate()
            remove_models(client, [m])
        return race, stops, colds


def bench_swaps_sched(r: Report, *, quick: bool = False) -> None:
    demo = live.demo_model()
    client = docker.from_env(timeout=120)
    per_client = 4 if quick else 10
    results = {p: _one_policy(p, demo, client, per_client=per_client, floors=3) for p in ("batch", "fifo")}
    (bs, bt, bl, bf), (fs, ft, fl, ff) = results["batch"], results["fifo"]
    swap = of(bf + ff)
    r.value_row("mixed workload: swaps, batch vs fifo", f"{bs} vs {fs} ({fs / max(bs, 1):.1f}x fewer)",
                target=">= 3x fewer", met=fs >= 3 * bs)
    r.value_row("mixed workload: total time, batch vs fifo", f"{bt:.1f} s vs {ft:.1f} s ({ft / bt:.2f}x less)",
                target=">= 1.5x less", met=ft >= 1.5 * bt)
    limit = MAX_SWAP_WAIT_S + swap.median
    r.time_row("mixed workload, batch: request latency (wait + 2-token answer)", of(bl),
               target=f"p99 <= max_swap_wait + one swap = {limit:.1f} s", limit=limit, on="p99")
    r.time_row("mixed workload, fifo: request latency (wait + 2-token answer)", of(fl))
    r.time_row("floor: one swap (the other model idle)", swap)
    race, stops, colds = _ttl_race(demo, client, runs=3)
    floor = of(stops).median + of(colds).median
    r.time_row("request arriving as the idle TTL fires", of(race),
               target=f"<= 1.2x (stop + cold start) = {1.2 * floor:.2f} s", limit=1.2 * floor, floor=floor)
    r.time_row("floor: graceful stop (STOPPING -> STOPPED)", of(stops))
    r.time_row("floor: cold start (request to a stopped model)", of(colds))
    r.notes.append(f"4 clients x {per_client} requests, each alternating A and B, one at a time; clients 0 and 2 "
                   "start with A, 1 and 3 with B. Swaps are the daemon's own count (on-demand starts that waited "
                   "for the other model to make room). batch: --max-swap-wait "
                   f"{MAX_SWAP_WAIT_S:g}; fifo: strict arrival order.")
    r.how.append(("swaps-sched", "`.venv/bin/python -m bench.run --only swaps-sched --out docs/BENCHMARKS.md`"))
