"""Swap-aware scheduling (issue 17 §2) and the idle-TTL race (§4), each beside its floor, one run.

    python -m bench.run --only swaps-sched --out docs/BENCHMARKS.md [--quick]

Two on-demand models A and B (the demo model under two names, 1g each) under a 1500m budget: room
for one. For `--swap-policy batch` and then `fifo` (one daemon each, same manifests):

- 4 clients, each alternating A and B for 10 requests (clients 0 and 2 start with A, 1 and 3 with B,
  0.1 s apart), closed loop (one request at a time) and then open loop (one every 0.5 s, answered or
  not): the daemon's swaps (its "swap" log lines), the workload's total
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
from dataclasses import dataclass
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
OPEN_INTERVAL_S = 0.5
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


def _workload(d: Daemon, a: str, b: str, *, clients: int, per_client: int,
              open_loop: bool = False) -> tuple[float, list[float]]:
    """Closed loop: each client sends its next request when the last one is answered. Open loop: each
    client sends one every OPEN_INTERVAL_S whatever the answers (requests pile up while a swap runs)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(http: httpx.Client, model: str) -> None:
        try:
            s = _chat(http, d, model)
        except httpx.HTTPError as e:
            errors.append(str(e))
            return
        with lock:
            latencies.append(s)

    def client(i: int) -> None:
        time.sleep(0.1 * i)
        with httpx.Client(timeout=TIMEOUT_S, limits=httpx.Limits(max_connections=per_client)) as http:
            if not open_loop:
                for j in range(per_client):
                    one(http, (a, b)[(i + j) % 2])
                return
            sent = []
            for j in range(per_client):
                t = threading.Thread(target=one, args=(http, (a, b)[(i + j) % 2]))
                t.start()
                sent.append(t)
                time.sleep(OPEN_INTERVAL_S)
            for t in sent:
                t.join(TIMEOUT_S * per_client)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S * per_client)
    if errors:
        raise SystemExit(f"swaps-sched: {len(errors)} requests failed: {errors[:3]}")
    return time.perf_counter() - t0, latencies


@dataclass(frozen=True)
class Run:
    swaps: int
    total_s: float
    latencies: list[float]


def _one_policy(policy: str, demo: Path, client: docker.DockerClient, *, per_client: int, floors: int,
                ) -> tuple[Run, Run, list[float]]:
    """(closed-loop run, open-loop run, single-swap floors) for one daemon under `policy`."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"bench{tag}-a", f"bench{tag}-b"
    with tempfile.TemporaryDirectory(prefix=f"swaps-{policy}-") as tmp:
        for name in (a, b):
            Path(tmp, f"{name}.yaml").write_text(_manifest(name, demo, "lifecycle: on-demand\n"))
        d = Daemon(Path(tmp), extra=["--memory-budget", BUDGET, "--swap-policy", policy,
                                     "--max-swap-wait", str(MAX_SWAP_WAIT_S)]).start()
        try:
            wait_for(lambda: _state(d, a) == "STOPPED", 60, "the gateway up")
            runs = []
            for open_loop in (False, True):
                since = time.monotonic()
                total, latencies = _workload(d, a, b, clients=4, per_client=per_client, open_loop=open_loop)
                runs.append(Run(len(_events(d, "swap", since)), total, latencies))
            one: list[float] = []
            with httpx.Client(timeout=TIMEOUT_S) as http:
                _chat(http, d, a)                       # a loaded and idle
                for i in range(floors):
                    one.append(_chat(http, d, (b, a)[i % 2]))
            return runs[0], runs[1], one
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
    (bc, bo, bf), (fc, fo, ff) = results["batch"], results["fifo"]
    swap = of(bf + ff)
    limit = MAX_SWAP_WAIT_S + swap.median
    for label, b, f in (("closed loop", bc, fc), (f"open loop (a request every {OPEN_INTERVAL_S:g} s)", bo, fo)):
        r.value_row(f"{label}: swaps, batch vs fifo", f"{b.swaps} vs {f.swaps} ({f.swaps / max(b.swaps, 1):.1f}x fewer)",
                    target=">= 3x fewer", met=f.swaps >= 3 * b.swaps)
        r.value_row(f"{label}: total time, batch vs fifo",
                    f"{b.total_s:.1f} s vs {f.total_s:.1f} s ({f.total_s / b.total_s:.2f}x less)",
                    target=">= 1.5x less", met=f.total_s >= 1.5 * b.total_s)
        r.time_row(f"{label}, batch: request latency (wait + 2-token answer)", of(b.latencies),
                   target=f"p99 <= max_swap_wait + one swap = {limit:.1f} s", limit=limit, on="p99")
        r.time_row(f"{label}, fifo: request latency (wait + 2-token answer)", of(f.latencies))
    r.time_row("floor: one swap (the other model idle)", swap)
    race, stops, colds = _ttl_race(demo, client, runs=3)
    floor = of(stops).median + of(colds).median
    r.time_row("request arriving as the idle TTL fires", of(race),
               target=f"<= 1.2x (stop + cold start) = {1.2 * floor:.2f} s", limit=1.2 * floor, floor=floor)
    r.time_row("floor: graceful stop (STOPPING -> STOPPED)", of(stops))
    r.time_row("floor: cold start (request to a stopped model)", of(colds))
    r.notes.append(f"4 clients x {per_client} requests, each alternating A and B; clients 0 and 2 "
                   "start with A, 1 and 3 with B, 0.1 s apart. Closed loop: one request at a time per client (its "
                   "next is sent when the last is answered, so no queue builds while a model serves: the "
                   "scheduler has little to batch). Open loop: each client sends one every "
                   f"{OPEN_INTERVAL_S:g} s whatever the answers (the requests for the model not loaded pile up "
                   "while the other serves). Swaps are the daemon's own count (on-demand starts that waited "
                   "for the other model to make room). batch: --max-swap-wait "
                   f"{MAX_SWAP_WAIT_S:g}; fifo: strict arrival order.")
    r.how.append(("swaps-sched", "`.venv/bin/python -m bench.run --only swaps-sched --out docs/BENCHMARKS.md`"))
