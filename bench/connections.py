"""Upstream connections under steady load (issue 21): nothing fails on a healthy model.

    python -m bench.run --only connections --out docs/BENCHMARKS.md [--quick] [--requests N]

One real llama-supervisord with its gateway and one always-on model (parallel 4). Four clients,
each with its own kept-alive connection to the gateway, send N requests between them: every third
one streams 8 tokens, the rest are 1-token completions. Counted: answers that were not a 200 with a
complete body (a stream: no error event, ends with `[DONE]`), the requests the gateway sent again on
a new connection because llama-server closed a kept-alive one as it was reused (its metric
`gateway_stale_retries_total`), the "model unreachable" lines it logged (re-sends counted against a
failed model), and the daemon's RSS and open fds before and after.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import httpx

from bench import live
from bench.gateway import body, stream_once

if TYPE_CHECKING:
    from bench.run import Report

CLIENTS = 4
START_TIMEOUT_S = 120.0


def _metric(text: str, name: str, model: str) -> float:
    m = re.search(rf'^{name}\{{model="{re.escape(model)}"\}} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _one(http: httpx.Client, url: str, model: str, n: int) -> tuple[bool, float]:
    t0 = time.perf_counter()
    if n % 3 == 0:
        ok = stream_once(http, url, body(model, max_tokens=8, stream=True)).ok
    else:
        r = http.post(url, json=body(model, max_tokens=1))
        ok = r.status_code == 200 and bool(r.json().get("choices"))
    return ok, time.perf_counter() - t0


def bench_connections(r: Report, *, quick: bool, requests: int | None = None) -> None:
    total = requests if requests is not None else (300 if quick else 3000)
    demo = live.demo_model()
    d_dir = Path(tempfile.mkdtemp(prefix="bench-conn-"))
    model = f"benchconn{uuid.uuid4().hex[:6]}"
    (d_dir / "m.yaml").write_text(live.model_yaml(model, None, demo, live.DEMO_SHA256, ctx=1024, parallel=4,
                                                  memory="512m", fast_probes=False))
    metrics_port = live.free_port()
    daemon = live.Daemon(d_dir, extra=["--metrics-port", str(metrics_port), "--stop-timeout", "10"])
    client = docker.from_env(timeout=60)
    try:
        daemon.start()
        assert daemon.proc is not None

        def running() -> bool:
            try:
                got = httpx.get(f"{daemon.gateway}/v1/models", timeout=5, trust_env=False).json()
                return any(m["id"] == model and m["state"] == "RUNNING" for m in got["data"])
            except (httpx.HTTPError, ValueError):
                return False

        live.wait_for(running, START_TIMEOUT_S, f"{model} RUNNING", step=0.1)
        url = f"{daemon.gateway}/v1/completions"
        with httpx.Client(trust_env=False, timeout=60) as warm:      # the first load of the weights
            _one(warm, url, model, 1)
        time.sleep(1.0)
        before = live.proc_stats(daemon.proc.pid)
        since = time.monotonic()
        counter = itertools.count()
        lock = threading.Lock()
        failed: list[int] = []
        took: list[float] = []

        def client_loop() -> None:
            with httpx.Client(trust_env=False, timeout=60) as http:
                while (n := next(counter)) < total:
                    try:
                        ok, dt = _one(http, url, model, n)
                    except (httpx.HTTPError, ValueError):
                        ok, dt = False, 0.0
                    with lock:
                        took.append(dt)
                        if not ok:
                            failed.append(n)

        t0 = time.monotonic()
        threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        time.sleep(1.0)
        after = live.proc_stats(daemon.proc.pid)
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5, trust_env=False).text
        stale = _metric(text, "llama_supervisor_gateway_stale_retries_total", model)
        with daemon._lock:
            records = [rec for t, rec in daemon.lines if t >= since]
        unreachable = sum(1 for rec in records if rec.get("event", "").startswith("model unreachable"))
        transitions = sum(1 for rec in records if rec.get("event") == "transition")
    except Exception:
        print(daemon.dump())
        raise
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            try:
                daemon.terminate(30)
            except subprocess.TimeoutExpired:
                daemon.kill9()
        live.remove_models(client, [model])
        client.close()
    streams = len(range(0, total, 3))
    r.value_row(f"requests answered 200 and complete, of {total} ({streams} streams)", f"{total - len(failed)}",
                target=f"{total}", met=not failed)
    r.value_row("non-200 or incomplete", f"{len(failed)}", target="0", met=not failed)
    r.value_row("stale-connection retries (sent again on a new connection)", f"{stale:g}", target="0",
                met=stale == 0)
    r.value_row("'model unreachable' re-sends logged", f"{unreachable}", target="0", met=unreachable == 0)
    r.value_row("model transitions during the run", f"{transitions}", target="0", met=transitions == 0)
    r.value_row("daemon RSS before -> after", f"{before.rss_bytes / 2**20:.1f} -> {after.rss_bytes / 2**20:.1f} MiB")
    r.value_row("daemon open fds before -> after", f"{before.fds} -> {after.fds}")
    r.value_row("request latency, median (1-token and 8-token streams mixed)",
                f"{statistics.median(took) * 1000:.1f} ms" if took else "-")
    r.value_row("wall time", f"{wall:.1f} s ({total / wall:.1f} requests/s)")
    if failed:
        r.notes.append(f"failed request numbers (first 20): {json.dumps(failed[:20])}")
    r.how.append(("connections", f"{CLIENTS} threads, one kept-alive httpx client each, share a counter to "
                  f"{total}; request n streams 8 tokens when n % 3 == 0, else asks for 1 token "
                  "(temperature 0, seed 42, cache_prompt false); the model: demo, ctx 1024, parallel 4, threads 1, "
                  "512m, default probes. Stale retries from the daemon's /metrics, the log lines from its JSON "
                  "log; RSS and fds by psutil 1 s before the first request and 1 s after the last"))
