"""The gateway's figures (issue 8), each beside the direct path measured in the same run.

    python -m bench.run --only gateway --out docs/BENCHMARKS.md [--quick]

One real llama-supervisord with its gateway and a memory budget of 2000 MiB serves:
    steady   always, its own port, parallel 4, ctx 1024, 512m    overhead pairs, 100 clients
    cold     on-demand, idle_ttl 2 s, 300m                       cold start (stopped between runs)
    swap-a   on-demand, 1g                                       swaps: 512m + 2 x 1g does not fit,
    swap-b   on-demand, 1g                                       so a request for one stops the other
Then a second fleet of 3 always-on models (default probes) for the daemon's RSS and idle CPU with
the gateway on and with --no-gateway.

Every request is a `/v1/completions` with temperature 0, seed 42 and `cache_prompt: false`, so
llama-server evaluates the same prompt in full on both paths. Both paths use a kept-alive
httpx client of their own; gateway and direct requests alternate (which goes first alternates too).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import httpx
import psutil

from bench import live
from bench.stats import of
from tests.integration.daemon_harness import instance_for

if TYPE_CHECKING:
    from bench.run import Report

BUDGET = "2000m"
PROMPT = "The capital of France is"
START_TIMEOUT_S = 120.0


def body(model: str, *, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "seed": 42,
            "cache_prompt": False, "ignore_eos": True, "stream": stream}


@dataclass(frozen=True)
class Stream:
    first: float          # seconds from the request to the first token chunk
    total: float          # seconds from the request to the end of the stream
    tokens: int           # chunks with text
    rate: float           # tokens/s between the first and the last token
    ok: bool              # 200, no error event, ended with [DONE]


def stream_once(http: httpx.Client, url: str, payload: dict[str, Any]) -> Stream:
    t0 = time.perf_counter()
    first = last = 0.0
    tokens, done, ok = 0, False, True
    with http.stream("POST", url, json=payload) as r:
        ok = r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            doc = json.loads(data)
            if "error" in doc:
                ok = False
                continue
            if doc.get("choices") and doc["choices"][0].get("text"):
                last = time.perf_counter()
                if not tokens:
                    first = last
                tokens += 1
    end = time.perf_counter()
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return Stream(first - t0 if tokens else end - t0, end - t0, tokens, rate, ok and done and tokens > 0)


def post_once(http: httpx.Client, url: str, payload: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    r = http.post(url, json=payload)
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
    return dt


def interleaved(n: int, gw: Callable[[], float], direct: Callable[[], float]) -> tuple[list[float], list[float]]:
    """n pairs, alternating which path goes first."""
    g, d = [], []
    for i in range(n):
        if i % 2:
            d.append(direct())
            g.append(gw())
        else:
            g.append(gw())
            d.append(direct())
    return g, d


# --- the fleet ---------------------------------------------------------------------------------

class GatewayFleet:
    def __init__(self, demo: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.dir = Path(tempfile.mkdtemp(prefix="bench-gw-"))
        self.names = {k: f"benchgw{tag}-{k}" for k in ("steady", "cold", "swap-a", "swap-b")}
        # Every model on a port of its own (the gateway does not need it): the benchmark calls the
        # steady model directly and polls the others' /health to split a start into load and detection.
        self.port = {k: live.free_port() for k in self.names}
        self.steady_port = self.port["steady"]
        sha = live.DEMO_SHA256
        on_demand = "lifecycle: on-demand\n"
        files = {
            "steady": live.model_yaml(self["steady"], self.steady_port, demo, sha, ctx=1024, parallel=4,
                                      memory="512m", fast_probes=False),
            "cold": live.model_yaml(self["cold"], self.port["cold"], demo, sha, memory="300m", fast_probes=False,
                                    serving=on_demand + "idle_ttl: 2\n"),
            "swap-a": live.model_yaml(self["swap-a"], self.port["swap-a"], demo, sha, fast_probes=False,
                                      serving=on_demand),
            "swap-b": live.model_yaml(self["swap-b"], self.port["swap-b"], demo, sha, fast_probes=False,
                                      serving=on_demand),
        }
        for k, text in files.items():
            (self.dir / f"{k}.yaml").write_text(text)
        self.daemon: live.Daemon | None = None
        self.client = docker.from_env(timeout=60)

    def __getitem__(self, key: str) -> str:
        return self.names[key]

    def start(self) -> live.Daemon:
        self.daemon = live.Daemon(self.dir, extra=["--resync-interval", "30", "--stop-timeout", "10",
                                                   "--memory-budget", BUDGET]).start()
        return self.daemon

    def state(self, model: str) -> str | None:
        assert self.daemon is not None
        try:
            r = httpx.get(f"{self.daemon.gateway}/v1/models", timeout=5, trust_env=False)
            return {m["id"]: m for m in r.json()["data"]}.get(model, {}).get("state")
        except (httpx.HTTPError, ValueError):
            return None

    def wait_state(self, model: str, state: str, timeout: float = START_TIMEOUT_S) -> None:
        live.wait_for(lambda: self.state(model) == state, timeout, f"{model} {state}", step=0.05)

    def events(self, since: float, until: float) -> list[tuple[float, str, str]]:
        """(wall time, action, model) of this daemon's container events in [since, until]."""
        assert self.daemon is not None
        label = f"io.llama-supervisor.instance={instance_for(self.daemon.manifests)}"
        out = []
        for e in self.client.events(since=since, until=until + 0.5, decode=True,
                                    filters={"type": "container", "label": label}):
            attrs = e.get("Actor", {}).get("Attributes", {})
            out.append((e["timeNano"] / 1e9, e.get("Action", ""), attrs.get("io.llama-supervisor.model", "")))
        return sorted(out)

    def close(self) -> None:
        d = self.daemon
        if d is not None and d.proc is not None and d.proc.poll() is None:
            try:
                d.terminate(30)
            except subprocess.TimeoutExpired:
                d.kill9()
        live.remove_models(self.client, list(self.names.values()))
        self.client.close()


class HealthWatch:
    """Polls a port's /health every 20 ms in the background from now on: when did it first answer 200."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.at: float | None = None
        self._t = threading.Thread(target=self._run, args=(port, timeout), daemon=True)
        self._t.start()

    def _run(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=0.5) as http:
            while time.monotonic() < deadline:
                try:
                    if http.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        self.at = time.monotonic()
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(live.POLL_S)

    def result(self) -> float:
        self._t.join(60)
        assert self.at is not None, "never healthy"
        return self.at


def first_at(events: list[tuple[float, str, str]], model: str, actions: set[str], after: float = 0.0) -> float | None:
    return next((t for t, a, m in events if m == model and a in actions and t >= after), None)


# --- the phases --------------------------------------------------------------------------------

def overhead(r: Report, f: GatewayFleet, *, pairs: int, stream_pairs: int, rate_pairs: int, rate_tokens: int) -> None:
    assert f.daemon is not None
    model = f["steady"]
    gw_url = f"{f.daemon.gateway}/v1/completions"
    direct_url = f"http://127.0.0.1:{f.steady_port}/v1/completions"
    short, tiny = body(model, max_tokens=4), body(model, max_tokens=4, stream=True)
    with httpx.Client(trust_env=False, timeout=120) as g, httpx.Client(trust_env=False, timeout=120) as d:
        for _ in range(5):                                       # warm both connections and the model
            post_once(g, gw_url, short)
            post_once(d, direct_url, short)
        lat_g, lat_d = interleaved(pairs, lambda: post_once(g, gw_url, short), lambda: post_once(d, direct_url, short))
        s_g: list[Stream] = []
        s_d: list[Stream] = []

        def sg() -> float:
            s_g.append(stream_once(g, gw_url, tiny))
            return s_g[-1].first

        def sd() -> float:
            s_d.append(stream_once(d, direct_url, tiny))
            return s_d[-1].first

        interleaved(stream_pairs, sg, sd)
        long_body = body(model, max_tokens=rate_tokens, stream=True)
        r_g: list[Stream] = []
        r_d: list[Stream] = []

        def rg() -> float:
            r_g.append(stream_once(g, gw_url, long_body))
            return r_g[-1].rate

        def rd() -> float:
            r_d.append(stream_once(d, direct_url, long_body))
            return r_d[-1].rate

        interleaved(rate_pairs, rg, rd)
        # the raw pass-through with no inference at all: what the proxy itself adds
        up_g = f"{f.daemon.gateway}/upstream/{model}/health"
        up_d = f"http://127.0.0.1:{f.steady_port}/health"

        def get(http: httpx.Client, url: str) -> float:
            t0 = time.perf_counter()
            http.get(url).raise_for_status()
            return time.perf_counter() - t0

        h_g, h_d = interleaved(pairs * 2, lambda: get(g, up_g), lambda: get(d, up_d))
    bad = [s for s in s_g + s_d + r_g + r_d if not s.ok]
    assert not bad, f"{len(bad)} streams failed"
    ms = 1000.0
    G, D = of(lat_g), of(lat_d)
    diff = of([a - b for a, b in zip(lat_g, lat_d)])
    r.time_row("short completion (max_tokens 4), **direct** to the model's port", D, unit="ms", scale=ms)
    r.time_row("short completion (max_tokens 4), through the gateway", G, unit="ms", scale=ms,
               floor=D.median)
    r.value_row("  gateway added, p50 (median gateway - median direct)", f"{(G.median - D.median) * ms:.2f} ms",
                target="<= 2 ms", met=G.median - D.median <= 0.002)
    r.value_row("  gateway added, p99 (p99 gateway - p99 direct)", f"{(G.pct(99) - D.pct(99)) * ms:.2f} ms",
                target="<= 10 ms", met=G.pct(99) - D.pct(99) <= 0.010)
    r.time_row("  for reference: per-pair difference (gateway - direct, same pair)", diff, unit="ms", scale=ms)
    tg, td = of([s.first for s in s_g]), of([s.first for s in s_d])
    r.time_row("streaming time to first token, **direct**", td, unit="ms", scale=ms)
    r.time_row("streaming time to first token, through the gateway", tg, unit="ms", scale=ms, floor=td.median)
    r.value_row("  time to first token added (median gateway - median direct)",
                f"{(tg.median - td.median) * ms:.2f} ms", target="<= 5 ms", met=tg.median - td.median <= 0.005)
    rg_, rd_ = of([s.rate for s in r_g]), of([s.rate for s in r_d])
    r.value_row(f"tokens/s, {rate_tokens}-token stream, **direct** (n={rd_.n})", f"{rd_.median:.1f} tok/s")
    r.value_row(f"tokens/s, {rate_tokens}-token stream, through the gateway (n={rg_.n})",
                f"{rg_.median:.1f} tok/s ({rg_.median / rd_.median:.3f}x direct)", target=">= 0.98x direct",
                met=rg_.median / rd_.median >= 0.98)
    HG, HD = of(h_g), of(h_d)
    r.time_row("for reference: GET /health **direct** (no inference)", HD, unit="ms", scale=ms)
    r.time_row("for reference: GET /upstream/<model>/health through the gateway", HG, unit="ms", scale=ms,
               floor=HD.median)
    r.rows[-1].ratio += f" (+{(HG.median - HD.median) * ms:.2f} ms p50, +{(HG.pct(99) - HD.pct(99)) * ms:.2f} ms p99)"
    r.how.append(("gateway overhead, time to first token, tokens/s",
                  f"`python -m bench.run --only gateway --out /tmp/b.md` (bench/gateway.py overhead): {pairs} "
                  f"interleaved pairs (which path goes first alternates) of the same `POST /v1/completions` "
                  f"(prompt {PROMPT!r}, max_tokens 4, temperature 0, seed 42, `cache_prompt: false` so both paths "
                  f"evaluate the prompt in full, `ignore_eos`), one kept-alive httpx.Client per path, after 5 warm-up "
                  f"requests each; timed from before `post` to the whole body read. Time to first token: "
                  f"{stream_pairs} pairs of the same request with `stream: true`, to the first SSE chunk with text. "
                  f"Tokens/s: {rate_pairs} pairs of a {rate_tokens}-token stream, (tokens - 1) / (last token - first "
                  f"token). /health: {pairs * 2} pairs of GET, the raw pass-through with no model work"))


def concurrency(r: Report, f: GatewayFleet, *, clients: int, max_tokens: int, rounds: int) -> None:
    assert f.daemon is not None and f.daemon.proc is not None
    model = f["steady"]
    payload = body(model, max_tokens=max_tokens, stream=True)

    async def one(http: httpx.AsyncClient, url: str) -> bool:
        tokens, done = 0, False
        async with http.stream("POST", url, json=payload) as resp:
            if resp.status_code != 200:
                return False
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    doc = json.loads(line[6:])
                    if "error" in doc:
                        return False
                    tokens += bool(doc.get("choices") and doc["choices"][0].get("text"))
        return done and tokens == max_tokens

    async def crowd(url: str) -> tuple[float, int]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(trust_env=False, timeout=300, limits=limits) as http:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(one(http, url) for _ in range(clients)), return_exceptions=True)
            dt = time.perf_counter() - t0
        return dt, sum(1 for x in results if x is not True)

    daemon = psutil.Process(f.daemon.proc.pid)
    gw_times: list[float] = []
    direct_times: list[float] = []
    gw_errors = direct_errors = 0
    cpu = 0.0
    for i in range(rounds):                      # direct, gateway, direct, gateway...
        dt, errs = asyncio.run(crowd(f"http://127.0.0.1:{f.steady_port}/v1/completions"))
        direct_times.append(dt)
        direct_errors += errs
        c0 = daemon.cpu_times()
        dt, errs = asyncio.run(crowd(f"{f.daemon.gateway}/v1/completions"))
        c1 = daemon.cpu_times()
        cpu += (c1.user - c0.user) + (c1.system - c0.system)
        gw_times.append(dt)
        gw_errors += errs
        print(f"{clients} clients, round {i + 1}/{rounds}: direct {direct_times[-1]:.2f}s, gateway {dt:.2f}s, "
              f"errors {gw_errors}", flush=True)
    n = clients * rounds
    G, D = of(gw_times), of(direct_times)
    r.value_row(f"{clients} concurrent streaming clients, one model (parallel 4): errors through the gateway "
                f"({rounds} rounds)", f"{gw_errors} of {n}", target="0", met=gw_errors == 0)
    r.time_row(f"  total time, {clients} streams of {max_tokens} tokens, **direct** (errors {direct_errors} of {n})", D)
    r.time_row(f"  total time, {clients} streams of {max_tokens} tokens, through the gateway", G, floor=D.median)
    r.value_row("  daemon CPU time per request through the gateway (whole process, during the gateway rounds)",
                f"{cpu / n * 1000:.2f} ms ({cpu:.2f} s for {n})")
    r.how.append((f"{clients} concurrent clients",
                  f"`python -m bench.run --only gateway --out /tmp/b.md` (bench/gateway.py concurrency): {clients} "
                  f"streaming `/v1/completions` ({max_tokens} tokens, `ignore_eos`) started at once from one "
                  f"httpx.AsyncClient with {clients} connections, to the model with `parallel: 4`; an error is a "
                  f"non-200, an SSE error event, a missing `[DONE]` or fewer tokens than asked. CPU: psutil "
                  f"user+system time of the llama-supervisord process over the gateway rounds (its idle probes "
                  f"included), divided by the requests. {rounds} rounds, each the same {clients} clients directly to "
                  f"the model's port, then through the gateway; total time from the first request to the last end"))


def cold_start(r: Report, f: GatewayFleet, demo: Path, *, runs: int) -> None:
    assert f.daemon is not None
    model = f["cold"]
    floor = live.Floor(demo, memory="300m")
    offset = time.time() - time.monotonic()
    cold: list[float] = []
    parts: dict[str, list[float]] = {"request -> container start (Docker event)": [],
                                     "container start -> model's /health 200 (our 20 ms poll: the load)": [],
                                     "model's /health 200 -> daemon logs RUNNING (its probe sees it)": [],
                                     "RUNNING logged -> first token": []}
    floor_run: list[float] = []
    floor_first: list[float] = []
    gw_url = f"{f.daemon.gateway}/v1/completions"
    payload = body(model, max_tokens=4, stream=True)
    try:
        with httpx.Client(trust_env=False, timeout=START_TIMEOUT_S) as http:
            for i in range(runs):
                floor_run.append(floor.run_once())
                floor_first.append(stream_once(http, f"http://127.0.0.1:{floor.port}/v1/completions", payload).first)
                subprocess.run(["docker", "rm", "-f", floor.name], capture_output=True, timeout=60)

                f.wait_state(model, "STOPPED", 60)
                time.sleep(0.3)
                w0, t0 = time.time(), time.monotonic()
                watch = HealthWatch(f.port["cold"])
                s = stream_once(http, gw_url, payload)
                assert s.ok, "cold request failed"
                cold.append(s.first)
                t_first = t0 + s.first
                t_run = live.wait_log(f.daemon, t0, 30, event="transition", model=model, to="RUNNING")
                t_ok = watch.result()
                ev = f.events(w0, time.time())
                started = first_at(ev, model, {"start"}, w0)
                assert started is not None, f"no start event for {model}: {ev}"
                parts["request -> container start (Docker event)"].append(started - w0)
                parts["container start -> model's /health 200 (our 20 ms poll: the load)"].append(
                    t_ok + offset - started)
                parts["model's /health 200 -> daemon logs RUNNING (its probe sees it)"].append(t_run - t_ok)
                parts["RUNNING logged -> first token"].append(t_first - t_run)
                print(f"cold {i + 1}/{runs}: floor {floor_run[-1]:.2f}+{floor_first[-1]:.2f}s, "
                      f"gateway {cold[-1]:.2f}s", flush=True)
    finally:
        floor.close()
    fl = of([a + b for a, b in zip(floor_run, floor_first)])
    r.time_row("**floor**: bare `docker run` -> /health 200", of(floor_run))
    r.time_row("**floor** + first token: `docker run` -> /health 200, then request -> first token", fl)
    r.time_row("cold start through the gateway: request -> first token (on-demand model stopped)", of(cold),
               target="<= 1.03x floor + first token (issue 17)", limit=1.03 * fl.median, floor=fl.median)
    for what, values in parts.items():
        r.time_row(f"  {what}", of(values), digits=3)
    r.how.append(("cold start",
                  f"`python -m bench.run --only gateway --out /tmp/b.md` (bench/gateway.py cold_start): {runs} runs, "
                  "interleaved with the floor. Floor: `docker run -d` with the argv and hardening the daemon renders "
                  "for the same manifest (bench/live.py), to the first /health 200 (20 ms poll), then the same "
                  "streaming request (max_tokens 4) to that container, to its first token. Gateway: the on-demand "
                  "model (idle_ttl 2 s) is STOPPED in /v1/models, then a streaming request to the gateway, timed to "
                  "its first token. Parts: Docker's `start` event time, the first /health 200 of the model's own port "
                  "(polled every 20 ms by this process from the request on) and the receipt time of the daemon's "
                  "`transition ... RUNNING` log line"))


def swaps(r: Report, f: GatewayFleet, *, runs: int) -> None:
    assert f.daemon is not None
    a, b = f["swap-a"], f["swap-b"]
    gw_url = f"{f.daemon.gateway}/v1/completions"
    offset = time.time() - time.monotonic()
    total: list[float] = []
    parts: dict[str, list[float]] = {
        "request -> old model's stop begins (Docker `kill` event)": [],
        "old model's stop: `kill` -> `die`": [],
        "old model dead -> new model's container start (`die` -> `start`)": [],
        "new model's start -> its /health 200 (our 20 ms poll: the load)": [],
        "its /health 200 -> daemon logs RUNNING (its probe sees it)": [],
        "RUNNING logged -> first token": [],
    }
    created = 0
    with httpx.Client(trust_env=False, timeout=START_TIMEOUT_S) as http:
        f.wait_state(f["cold"], "STOPPED", 60)
        assert stream_once(http, gw_url, body(a, max_tokens=4, stream=True)).ok
        old, new = a, b
        for i in range(runs):
            time.sleep(0.5)                    # the old model idle, no request in flight
            w0, t0 = time.time(), time.monotonic()
            watch = HealthWatch(f.port["swap-b" if new == b else "swap-a"])
            s = stream_once(http, gw_url, body(new, max_tokens=4, stream=True))
            assert s.ok, f"swap request for {new} failed"
            total.append(s.first)
            t_run = live.wait_log(f.daemon, t0, 30, event="transition", model=new, to="RUNNING")
            t_ok = watch.result()
            ev = f.events(w0, time.time())
            kill = first_at(ev, old, {"kill", "stop"}, w0)
            die = first_at(ev, old, {"die"}, w0)
            start = first_at(ev, new, {"start"}, w0)
            created += first_at(ev, new, {"create"}, w0) is not None
            assert kill and die and start and kill <= die <= start, f"swap order: {ev}"
            parts["request -> old model's stop begins (Docker `kill` event)"].append(kill - w0)
            parts["old model's stop: `kill` -> `die`"].append(die - kill)
            parts["old model dead -> new model's container start (`die` -> `start`)"].append(start - die)
            parts["new model's start -> its /health 200 (our 20 ms poll: the load)"].append(t_ok + offset - start)
            parts["its /health 200 -> daemon logs RUNNING (its probe sees it)"].append(t_run - t_ok)
            parts["RUNNING logged -> first token"].append(t0 + s.first - t_run)
            print(f"swap {i + 1}/{runs}: {old[-6:]} -> {new[-6:]} {s.first:.2f}s", flush=True)
            old, new = new, old
    r.time_row("swap: A loaded, request for B, budget for one: request -> B's first token", of(total))
    for what, values in parts.items():
        r.time_row(f"  {what}", of(values), digits=3)
    r.notes.append(f"Swap: in {created} of {runs} swaps the new model's container was created anew (Docker "
                   "`create` event); otherwise its stopped container was started in place.")
    r.how.append(("swap",
                  f"`python -m bench.run --only gateway --out /tmp/b.md` (bench/gateway.py swaps): two on-demand "
                  f"models of 1g each under --memory-budget {BUDGET} with a 512m always-on model (so one fits); "
                  f"{runs} requests alternating between them, each a streaming request to the gateway (max_tokens 4) "
                  "timed to its first token. The parts are Docker's event times for this daemon's containers (the "
                  "old model's `kill` and `die`, the new one's `start`), the new model's first /health 200 on its own "
                  "port (polled every 20 ms from the request on) and the receipt time of the daemon's "
                  "`transition ... RUNNING` log line"))


def rest_cost(r: Report, demo: Path, *, idle_s: float) -> None:
    fleet = live.Fleet(demo, 3, prefix="benchrest")
    stats: dict[str, tuple[live.ProcStats, float]] = {}
    extra = ["--resync-interval", "30", "--stop-timeout", "10"]
    try:
        # the first daemon creates the containers; the measured ones both adopt them
        fleet.start_daemon()
        fleet.wait_all_healthy()
        for label, flags in (("gateway on", []), ("--no-gateway", ["--no-gateway"])):
            assert fleet.daemon is not None
            fleet.daemon.terminate(30)
            d = fleet.daemon = live.Daemon(fleet.dir, extra=[*extra, *flags]).start()
            live.wait_log(d, 0, 60, event="ready")
            if not flags:
                live.wait_for(lambda: _gateway_up(d), 30, "the gateway answering")
            fleet.wait_all_healthy()
            time.sleep(3)
            assert d.proc is not None
            st = live.proc_stats(d.proc.pid)
            stats[label] = (st, live.idle_cpu_percent(d.proc.pid, idle_s))
            print(f"rest, {label}: RSS {st.rss_bytes / 2**20:.1f} MiB, CPU {stats[label][1]:.2f} %", flush=True)
    finally:
        fleet.close()
    (on, cpu_on), (off, cpu_off) = stats["gateway on"], stats["--no-gateway"]
    r.value_row("daemon RSS at rest, 3 models, gateway on", f"{on.rss_bytes / 2**20:.1f} MiB", target="<= 50 MB",
                met=on.rss_bytes <= 50e6)
    r.value_row("daemon RSS at rest, 3 models, --no-gateway",
                f"{off.rss_bytes / 2**20:.1f} MiB (the gateway's own: {(on.rss_bytes - off.rss_bytes) / 2**20:+.1f} MiB)",
                target="<= 50 MB", met=off.rss_bytes <= 50e6)
    r.value_row(f"daemon idle CPU over {idle_s:.0f} s, 3 models, default probes, gateway on", f"{cpu_on:.2f} % of a core",
                target="<= 0.5 %", met=cpu_on <= 0.5)
    r.value_row(f"daemon idle CPU over {idle_s:.0f} s, 3 models, default probes, --no-gateway",
                f"{cpu_off:.2f} % of a core (the gateway's own: {cpu_on - cpu_off:+.2f} points)",
                target="<= 0.5 %", met=cpu_off <= 0.5)
    r.value_row("daemon threads at rest: gateway on / --no-gateway", f"{on.threads} / {off.threads}")
    r.how.append(("RSS and idle CPU, gateway on and off",
                  f"`python -m bench.run --only gateway --out /tmp/b.md` (bench/gateway.py rest_cost): 3 always-on "
                  "models with the default probe (every 2 s); a first daemon creates their containers and is "
                  "stopped (SIGTERM leaves them running), then a daemon with the gateway and one with --no-gateway "
                  "adopt them in turn; each is measured 3 s after every model answers /health: psutil RSS, then "
                  f"user+system CPU time over {idle_s:.0f} s of wall time"))


def _gateway_up(d: live.Daemon) -> bool:
    try:
        return httpx.get(f"{d.gateway}/health", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def bench_gateway(r: Report, *, quick: bool) -> None:
    demo = live.demo_model()
    pairs, stream_pairs, rate_pairs = (20, 20, 3) if quick else (80, 50, 10)
    clients, rounds, runs = 100, (1 if quick else 2), (3 if quick else 5)
    f = GatewayFleet(demo)
    try:
        d = f.start()
        live.wait_for(lambda: live.healthy(f.steady_port), START_TIMEOUT_S, "the always-on model healthy", step=0.1)
        f.wait_state(f["steady"], "RUNNING")
        print("gateway: overhead...", flush=True)
        overhead(r, f, pairs=pairs, stream_pairs=stream_pairs, rate_pairs=rate_pairs,
                 rate_tokens=64 if quick else 96)
        print(f"gateway: {clients} clients...", flush=True)
        concurrency(r, f, clients=clients, max_tokens=8, rounds=rounds)
        print("gateway: cold start...", flush=True)
        cold_start(r, f, demo, runs=runs)
        print("gateway: swaps...", flush=True)
        swaps(r, f, runs=runs)
        assert d.proc is not None
        st = live.proc_stats(d.proc.pid)
        served = 5 + pairs + stream_pairs + rate_pairs + 2 * pairs + clients * rounds + runs + runs + 1
        r.value_row(f"daemon RSS after all of the above (4 models, {served} requests through the gateway)",
                    f"{st.rss_bytes / 2**20:.1f} MiB")
    except Exception:
        if f.daemon is not None:
            print(f.daemon.dump())
        raise
    finally:
        f.close()
    print("gateway: RSS and idle CPU, gateway on and off...", flush=True)
    rest_cost(r, demo, idle_s=10.0 if quick else 30.0)
