"""`python -m bench.run --only router`: swaps and cold starts beside llama.cpp's own router mode (issue 17 §4).

One run, four servers of the same demo model under two names (A and B), room for one, a 1-token answer:

- **router**: `llama-server --models-dir /models --models-max 1` (no `-m`: one child process per model) in a
  container from the locked image, with the hardening and the server flags our daemon renders for the same
  manifest; the demo model bind-mounted read-only twice (`/models/<A>.gguf`, `/models/<B>.gguf`);
- **ours, Docker** (the default: a stopped on-demand model's container held at its gate, released through
  a FIFO: supervisor/runtime/docker/standby.py), **ours, Docker with --no-standby** and **ours, process
  runtime**: one llama-supervisord each, A and B on-demand under a `--memory-budget` that fits one, requests
  through its gateway.

After one load each (warm-up: the model file in the page cache, our checks' results kept), each round, phase
by phase across the servers (`run_round`): A and B stopped on every server (router: `POST /models/unload`;
ours: `stop`), REST_S, then per server a streaming request for A (cold start) and A again (warm), with the
two floors beside them; then per server B (swap: A is stopped first), each such step SETTLE_S long at
least; then per server, once B has been up
for `STABLE_S` (past our `stable_after_s`, so ours restarts it at once as a crash after a stable run) and
idle, SIGKILL of B's llama-server process from the host and a request for B (next request after an idle
SIGKILL). Every figure is request -> first token, medians of the rounds; with each, the server process's own
CPU time then (`server_cpu`), so that cold start and swap are also judged on what a supervisor adds beyond
the load's own work, whose speed varies from one load to the next by more than the targets (`beyond_load`,
`evened_ratios`, paired by round, each with a 95 % confidence interval for its median). Ours is split
into parts from its own log lines (the receipt time of each JSON line) and the model's own /health
(polled every 20 ms).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from bench import live
from bench.gateway import HealthWatch, body, stream_once
from bench.stats import median_ci, of

if TYPE_CHECKING:
    from bench.run import Report

CTL = str(Path(sys.executable).with_name("llama-supervisorctl"))
STABLE_S = 10.5            # RestartSettings.stable_after_s (10 s) and a margin
# How long A and B rest stopped before a round's cold start: past standby's arming (ARM_DELAY_S, 2 s, then
# the engine's start of the gated container), as for a model stopped by its idle TTL; the same for every server.
REST_S = 3.0
# How long each server's cold-start and swap step lasts at least, from its request: past what a start or a
# stop leaves running behind it (standby arms the stopped model's container ARM_DELAY_S, 2 s, after the
# stop; the process runtime starts its next spare launcher SPARE_DELAY_S, 2 s, after a launch), so that it
# lands in that server's own step, not in the next server's measurement. Before it, the swap of the server
# after standby's (the process runtime's, in 4 of 5 rounds) loaded 0.09-0.10 s slower than its cold start,
# against -0.01 to 0.06 s when it came first in the phase (three runs, 2026-11-30).
SETTLE_S = 3.0
LOAD_TIMEOUT_S = 120.0
ON_DEMAND = "lifecycle: on-demand\nidle_ttl: 600\n"
MEASURES = ("cold start", "warm request", "swap", "next request after an idle SIGKILL")


# --- the router ------------------------------------------------------------------------------------

def router_argv(spec_argv: tuple[str, ...]) -> list[str]:
    """Our rendered llama-server flags less what names one model (or its key, or its KV directory), plus
    the router's: the children get the same server flags as our models do."""
    drop = {"--model", "-m", "--alias", "-a", "--api-key-file", "--slot-save-path"}
    out: list[str] = []
    skip = False
    for a in spec_argv:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        out.append(a)
    return [*out, "--models-dir", "/models", "--models-max", "1"]


class Router:
    """llama-server in router mode, in a hardened container from the locked image."""

    def __init__(self, demo: Path, names: tuple[str, str]) -> None:
        from supervisor.core.spec import Mount

        self.dir = Path(tempfile.mkdtemp(prefix="bench-router-"))
        self.port = live.free_port()
        self.name = f"bench-floor-router-{uuid.uuid4().hex[:6]}"     # bench.run's CrowdWatch counts it as ours
        # rendered as ours are (on-demand: with `--swa-full`, which keeping the KV cache of this sliding-window
        # model adds), less what names one model: the children get the same server flags as our models
        (self.dir / "m.yaml").write_text(live.model_yaml("benchrouter", self.port, demo, live.DEMO_SHA256,
                                                         fast_probes=False, memory="1g", serving=ON_DEMAND))
        spec = live.render_one(self.dir)["benchrouter"].spec
        self.spec = dataclasses.replace(
            spec, argv=tuple(router_argv(spec.argv)),
            mounts=tuple(Mount(str(demo), f"/models/{n}.gguf") for n in names))
        self.names = names
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)
        subprocess.run(live.docker_run_argv(self.spec, self.name), check=True, capture_output=True, timeout=60)
        live.until_healthy(self.port)
        listed = self.models()
        if not set(self.names) <= set(listed):
            raise RuntimeError(f"the router lists {sorted(listed)}, not {list(self.names)}:\n{self.logs()}")

    def models(self) -> dict[str, str]:
        """Model id -> status, as the router lists them."""
        r = httpx.get(f"{self.url}/models", timeout=5, trust_env=False)
        r.raise_for_status()
        out = {}
        for m in r.json().get("data", []):
            st = m.get("status")
            out[str(m.get("id"))] = str(st.get("value") if isinstance(st, dict) else st)
        return out

    def unload_all(self) -> None:
        for name, status in self.models().items():
            if status != "unloaded":
                httpx.post(f"{self.url}/models/unload", json={"model": name}, timeout=30, trust_env=False)
        live.wait_for(lambda: all(s == "unloaded" for s in self.models().values()), 60, "router: all unloaded")

    def child_pid(self, model: str) -> int:
        """The llama-server child serving `model` (its command line names the model's file)."""
        pid = _container_pid(self.name)
        for p in psutil.Process(pid).children(recursive=True):
            if any(f"/models/{model}.gguf" in a for a in p.cmdline()):
                return int(p.pid)
        raise RuntimeError(f"router: no child process for {model}")

    def logs(self) -> str:
        return subprocess.run(["docker", "logs", "--tail", "40", self.name], capture_output=True, text=True,
                              timeout=30).stderr[-4000:]

    def close(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- ours ------------------------------------------------------------------------------------------

class Ours:
    """llama-supervisord with A and B on-demand, room for one, on one runtime."""

    def __init__(self, demo: Path, runtime: str, lock: Path | None, tag: str, *, standby: bool = True) -> None:
        self.runtime = runtime
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-router-{runtime}-"))
        letter = runtime[:1] if standby else "n"
        self.names = (f"bench{tag}{letter}-a", f"bench{tag}{letter}-b")
        self.port = {n: live.free_port() for n in self.names}
        for n in self.names:
            # the default health settings, but a start budget the router does not have either (it waits
            # as long as a load takes): on a crowded host a load can take longer than the estimate's
            (self.dir / f"{n}.yaml").write_text(live.model_yaml(n, self.port[n], demo, live.DEMO_SHA256,
                                                                fast_probes=False, memory="1g", serving=ON_DEMAND)
                                                + "health:\n  start_timeout: 300\n")
        extra = ["--resync-interval", "30", "--stop-timeout", "10", "--memory-budget", "1500m",
                 "--runtime", runtime]
        if lock is not None:
            extra += ["--lock", str(lock)]
        if not standby:
            extra += ["--no-standby"]
        self.daemon = live.Daemon(self.dir, extra=extra)
        self.sock = str(self.daemon.sockdir / "ctl.sock")

    def start(self) -> None:
        self.daemon.start()
        self.daemon.wait_log(lambda r: r.get("event") == "ready", 60, "daemon ready")
        live.wait_for(lambda: _up(self.daemon.gateway), 30, "the gateway answering")

    def ctl(self, *args: str) -> None:
        subprocess.run([CTL, "--socket", self.sock, *args], check=True, capture_output=True, timeout=180)

    def pid(self, model: str) -> int:
        if self.runtime == "docker":
            out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=io.llama-supervisor.model={model}"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.split()
            return _container_pid(out[0])
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if "--port" in cmd and str(self.port[model]) in cmd and any("llama-server" in a for a in cmd[:1]):
                return int(p.info["pid"])
        raise RuntimeError(f"no process for {model}")

    def after(self, t0: float, event: str, **match: Any) -> float | None:
        hit = self.daemon.find(lambda r: r.get("event") == event and all(r.get(k) == v for k, v in match.items()),
                               since=t0)
        return hit[0] if hit else None

    def close(self) -> None:
        from tests.integration.daemon_harness import instance_for

        d = self.daemon
        if d.proc is not None and d.proc.poll() is None:
            try:
                self.ctl("shutdown", "--stop-models")
                d.proc.wait(60)
            except (subprocess.SubprocessError, OSError):
                d.kill9()
        if self.runtime == "docker":
            import docker

            client = docker.from_env(timeout=60)
            live.remove_models(client, list(self.names))
            client.close()
        from supervisor import paths

        shutil.rmtree(paths.state_dir() / "processes" / instance_for(self.dir), ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _up(gateway: str) -> bool:
    try:
        return httpx.get(f"{gateway}/health", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _first_token(http: httpx.Client, url: str, model: str, *, retries: int = 0) -> float:
    """Request -> first token of a 1-token streaming answer. With `retries`, a failed answer is sent again
    (20 ms later) and the time counts from the first try: what a client that retries sees."""
    t0 = time.perf_counter()
    for attempt in range(retries + 1):
        t = time.perf_counter()
        try:
            s = stream_once(http, f"{url}/v1/completions", body(model, max_tokens=1, stream=True))
        except httpx.HTTPError:
            s = None
        if s is not None and s.ok:
            return t - t0 + s.first
        if attempt == retries:
            raise RuntimeError(f"request for {model} at {url} failed {retries + 1} times")
        time.sleep(0.02)
    raise AssertionError("unreachable")


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid} survived SIGKILL")
        time.sleep(0.005)


# --- one round -------------------------------------------------------------------------------------

Figures = dict[str, list[float]]


# Each round is run phase by phase across the four servers (every server's cold start, then every swap,
# then every kill), so that the figures compared were taken seconds apart: on a host whose speed drifts
# over minutes (the AMD host of 2026-11-30: the same bare start 1.5 s in one minute, 2.3 s in another),
# a whole round per server put 30-60 s between the router's figure and ours.
Round = Iterator[None]


def router_round(rt: Router, http: httpx.Client, out: Figures) -> Round:
    a, b = rt.names
    rt.unload_all()
    yield                                           # every server at rest, then REST_S
    before = cpu_snapshot()
    t0 = time.monotonic()
    out["cold start"].append(_first_token(http, rt.url, a))
    out[CPU + "cold start"].append(server_cpu(rt.child_pid(a), before))
    out["warm request"].append(_first_token(http, rt.url, a))
    _settle(t0)
    yield
    time.sleep(0.5)
    before = cpu_snapshot()
    t0 = time.monotonic()
    out["swap"].append(_first_token(http, rt.url, b))
    out[CPU + "swap"].append(server_cpu(rt.child_pid(b), before))
    t_b = time.monotonic()
    _settle(t0)
    yield
    time.sleep(max(0.0, t_b + STABLE_S - time.monotonic()))
    before = cpu_snapshot()
    _kill(rt.child_pid(b))
    out["next request after an idle SIGKILL"].append(_first_token(http, rt.url, b, retries=100))
    out[CPU + "next request after an idle SIGKILL"].append(server_cpu(rt.child_pid(b), before))


def ours_round(o: Ours, http: httpx.Client, out: Figures, parts: Figures) -> Round:
    a, b = o.names
    gw = o.daemon.gateway
    o.ctl("stop", a, b)
    yield
    before = cpu_snapshot()
    t0 = time.monotonic()
    watch = HealthWatch(o.port[a])
    out["cold start"].append(_first_token(http, gw, a))
    out[CPU + "cold start"].append(server_cpu(o.pid(a), before))
    _parts(o, parts, "cold", t0, a, watch)
    out["warm request"].append(_first_token(http, gw, a))
    _settle(t0)
    yield
    time.sleep(0.5)
    before = cpu_snapshot()
    t0 = time.monotonic()
    watch = HealthWatch(o.port[b])
    out["swap"].append(_first_token(http, gw, b))
    out[CPU + "swap"].append(server_cpu(o.pid(b), before))
    _parts(o, parts, "swap", t0, b, watch, old=a)
    t_b = time.monotonic()
    o.daemon.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == b and r.get("to") == "RUNNING",
                      30, f"{b} RUNNING", since=t0)
    _settle(t0)
    yield
    time.sleep(max(0.0, t_b + STABLE_S - time.monotonic()))
    before = cpu_snapshot()
    _kill(o.pid(b))
    t0 = time.monotonic()
    watch = HealthWatch(o.port[b])
    out["next request after an idle SIGKILL"].append(_first_token(http, gw, b, retries=100))
    out[CPU + "next request after an idle SIGKILL"].append(server_cpu(o.pid(b), before))
    _parts(o, parts, "kill", t0, b, watch)


def floor_round(floor: live.Floor, binary: str, docker_start: list[float], bare: list[float],
                floor_cpu: Figures) -> Round:
    """The two floors, taken in the cold-start phase beside the servers' cold starts."""
    yield
    t0 = time.monotonic()
    docker_start.append(floor.start_once())
    floor_cpu["docker start"].append(server_cpu(_container_pid(floor.name)))
    wall, cpu = bare_start(binary, floor)
    bare.append(wall)
    floor_cpu["bare"].append(cpu)
    _settle(t0)


# The prefix of a figure's companion: the server process's own CPU time (user + system, itself and its
# descendants) when that figure was taken, read right after its first token (floors: after /health 200),
# less what the same processes had used before the request (`cpu_snapshot`): exec keeps a process's CPU
# time, so the process runtime's server would otherwise carry its spare launcher's interpreter start-up
# (about 30 ms, taken seconds before the request) and standby's container its gate's.
# On these hosts a load is one busy thread (`--threads 1`): its wall time is its CPU time, and that CPU time
# varies by 10-16 % from one load to the next with the host's speed (2026-12-01, an Intel Xeon host: 1.16
# to 1.62 s of CPU for the same bare load, no steal time) - more than the 5 % the targets resolve, and
# independently per load, so pairing by round does not cancel it. The time a start takes beyond its
# server's own CPU time is what the supervisor (and the router) add: `beyond_load`. Not so after a SIGKILL:
# ours restarts the server as soon as it sees the death, before the request, and that CPU counts too; that
# row is not judged.
CPU = "cpu: "


Snapshot = dict[int, tuple[float, float]]       # pid -> (its create time, its CPU seconds then)


def cpu_snapshot() -> Snapshot:
    """Every process's CPU time now, taken before a request and outside its timing."""
    out: Snapshot = {}
    for p in psutil.process_iter():
        try:
            t = p.cpu_times()
            out[p.pid] = (p.create_time(), t.user + t.system)
        except psutil.Error:
            continue
    return out


def server_cpu(pid: int, before: Snapshot | None = None) -> float:
    """CPU seconds used by `pid` and its live descendants (a container's init and what it runs), less what
    each of them (the same process: same pid and create time) had used at `before`."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
            created = p.create_time()
        except psutil.NoSuchProcess:
            continue
        then = (before or {}).get(p.pid)
        total += t.user + t.system - (then[1] if then and then[0] == created else 0.0)
    return total


def _container_pid(name: str) -> int:
    return int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", name], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip())


def _settle(t0: float) -> None:
    """The rest of a step's SETTLE_S: what its server left running behind it runs now, in its own step."""
    time.sleep(max(0.0, t0 + SETTLE_S - time.monotonic()))


def run_round(rounds: list[Round]) -> None:
    """The rounds' phases in lockstep: every server's stop, REST_S, every cold start, every swap, every kill."""
    first = True
    while rounds:
        rounds = [r for r in rounds if _step(r)]
        if first:
            time.sleep(REST_S)
            first = False


def _step(r: Round) -> bool:
    try:
        next(r)
    except StopIteration:
        return False
    return True


def _parts(o: Ours, parts: Figures, what: str, t0: float, model: str, watch: HealthWatch,
           old: str | None = None) -> None:
    """Where one start's time went, from the daemon's log lines and the model's own /health."""
    t_run = o.daemon.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == model
                              and r.get("to") == "RUNNING", 30, f"{model} RUNNING", since=t0)[0]
    t_ok = watch.result()
    begin = (o.after(t0, "start in place", model=model) or o.after(t0, "created", model=model))
    if old is not None:
        t_stop = o.after(t0, "stop", model=old)
        saved = o.daemon.find(lambda r: r.get("event") == "kv cache: saved" and r.get("model") == old, since=t0)
        t_stopped = o.after(t0, "transition", model=old, to="STOPPED")
        if t_stop is not None and t_stopped is not None:
            parts[f"{what}: old model's stop (its `stop` log line -> STOPPED)"].append(t_stopped - t_stop)
        t_evict = o.after(t0, "evicting", model=old)
        if t_evict is not None and t_stop is not None:
            parts[f"{what}: eviction decided -> `stop` logged (the KV save runs in between)"].append(t_stop - t_evict)
        if saved is not None:
            parts[f"{what}: old model's KV save (its `ms`)"].append(float(saved[1].get("ms", 0)) / 1000)
    if begin is not None:
        parts[f"{what}: request -> start call logged"].append(begin - t0)
        parts[f"{what}: start call -> model's /health 200 (20 ms poll)"].append(t_ok - begin)
    parts[f"{what}: model's /health 200 -> daemon logs RUNNING"].append(t_run - t_ok)
    restored = o.daemon.find(lambda r: r.get("event") == "kv cache: restored" and r.get("model") == model, since=t0)
    if restored is not None:
        parts[f"{what}: KV restore before RUNNING (its `ms`)"].append(float(restored[1].get("ms", 0)) / 1000)


# --- the section -----------------------------------------------------------------------------------

def process_lock() -> tuple[Path, str]:
    """A lock with the locked image's llama-server taken out for the process runtime (in the state dir's
    bin/, as `build --native VARIANT --from-image` puts it), written beside a temporary copy."""
    import docker

    from supervisor import paths
    from supervisor.artifacts import binaries, hardware
    from supervisor.artifacts.lock import ImageLock, read_lock, write_lock

    variant = hardware.best_variant(hardware.detect())
    image = read_lock(paths.lock_path()).get(variant)
    if image is None:
        raise SystemExit(f"no {variant} image in {paths.lock_path()}: run 'make setup'")
    client = docker.from_env(timeout=60)
    native = binaries.from_image(client, image, progress=lambda _: None)
    client.close()
    lock = Path(tempfile.mkdtemp(prefix="bench-router-lock-")) / "images.lock.json"
    write_lock(lock, ImageLock().with_record(image).with_binary(native))
    return lock, native.path


def bench_router(r: Report, *, quick: bool = False, runs: int | None = None) -> None:
    runs = runs or (3 if quick else 6)
    demo = live.demo_model()
    tag = uuid.uuid4().hex[:4]
    rt = Router(demo, (f"r{tag}-a", f"r{tag}-b"))
    lock, binary = process_lock()
    # BENCH_ROUTER_OURS=process (a comma list of docker, docker-plain, process): only those beside the router,
    # for a quicker A/B of one runtime; the report then has only their rows
    only = [k for k in os.environ.get("BENCH_ROUTER_OURS", "").split(",") if k]
    makers: dict[str, Callable[[], Ours]] = {
        "docker": lambda: Ours(demo, "docker", None, tag),
        "docker-plain": lambda: Ours(demo, "docker", None, tag, standby=False),
        "process": lambda: Ours(demo, "process", lock, tag)}
    if unknown := set(only) - set(makers):
        raise SystemExit(f"BENCH_ROUTER_OURS: unknown {sorted(unknown)}; use some of {sorted(makers)}")
    ours = {k: make() for k, make in makers.items() if not only or k in only}
    figs: dict[str, Figures] = {k: {x: [] for m in MEASURES for x in (m, CPU + m)} for k in ("router", *ours)}
    parts: dict[str, Figures] = {k: _defaultdict() for k in ours}
    floor = live.Floor(demo)
    floor_start: list[float] = []
    bare: list[float] = []
    floor_cpu: Figures = {"docker start": [], "bare": []}
    loads: list[float] = []
    try:
        rt.start()
        for o in ours.values():
            o.start()
        with httpx.Client(trust_env=False, timeout=LOAD_TIMEOUT_S) as http:
            # one load each before the rounds: the model file in the page cache and our checks' results kept,
            # as after any first start (the first create hashes the model and the image's binary)
            floor.run_once()
            _first_token(http, rt.url, rt.names[0])
            for o in ours.values():
                _first_token(http, o.daemon.gateway, o.names[0])
            for i in range(runs):
                loads.append(os.getloadavg()[0])
                # interleaved: each phase runs the four servers (and the floors) one after the other, in turn first
                order = [
                    router_round(rt, http, figs["router"]),
                    *(ours_round(o, http, figs[k], parts[k]) for k, o in ours.items()),
                    floor_round(floor, binary, floor_start, bare, floor_cpu),
                ]
                k = i % len(order)
                run_round(order[k:] + order[:k])
                print(f"router round {i + 1}/{runs}: " + ", ".join(
                    f"{k}: " + "/".join(f"{f[m][-1]:.2f}" for m in MEASURES) for k, f in figs.items()), flush=True)
    except Exception:
        print(rt.logs())
        for o in ours.values():
            print(o.daemon.dump())
        raise
    finally:
        floor.close()
        rt.close()
        for o in ours.values():
            o.close()
        shutil.rmtree(lock.parent, ignore_errors=True)
    if dump := os.environ.get("BENCH_ROUTER_DUMP"):       # the raw figures, to check the report offline
        Path(dump).write_text(json.dumps({"figs": figs, "parts": parts, "floor": floor_start, "bare": bare,
                                          "floor_cpu": floor_cpu, "loads": loads, "argv": list(rt.spec.argv)}))
    report(r, figs, parts, of(floor_start), of(bare), runs=runs, loads=loads, argv=rt.spec.argv,
           floor_cpu=floor_cpu)


def _defaultdict() -> Figures:
    from collections import defaultdict

    return defaultdict(list)


def report(r: Any, figs: dict[str, Figures], parts: dict[str, Figures], docker_start: Any, bare: Any, *, runs: int,
           loads: list[float], argv: tuple[str, ...], floor_cpu: Figures | None = None) -> None:
    r.time_row("**floor**: `docker start` of a stopped model container -> /health 200", docker_start)
    r.time_row("**floor**: the same binary and flags as a bare host process -> /health 200", bare)
    cost = max(0.0, docker_start.median - bare.median)
    r.value_row("the measured cost of `docker start` (the two floors' difference)", f"{cost:.2f} s")
    cost_beyond = None
    if floor_cpu and floor_cpu.get("bare"):
        d_beyond = beyond_load(docker_start.values, floor_cpu["docker start"])
        b_beyond = beyond_load(bare.values, floor_cpu["bare"])
        r.time_row("  floor, `docker start`: beyond its server's CPU time (wall - CPU)", of(d_beyond), digits=3)
        r.time_row("  floor, bare process: beyond its server's CPU time (wall - CPU)", of(b_beyond), digits=3)
        cost_beyond = max(0.0, of(paired_differences(d_beyond, b_beyond)).median)
        r.value_row("the measured cost of `docker start` beyond the load (the median of the rounds' differences "
                    "of the two floors' wall - CPU)", f"{cost_beyond:.2f} s")
    for m in MEASURES:
        judged = m in ("cold start", "swap")
        base = of(figs["router"][m])
        r.time_row(f"{m}: router", base)
        router_cpu = figs["router"].get(CPU + m) or []
        if router_cpu:
            r.time_row(f"  {m}: router, beyond its child's CPU time (wall - CPU)",
                       of(beyond_load(figs["router"][m], router_cpu)), digits=3)
        for k, label in (("docker", "ours, Docker"), ("docker-plain", "ours, Docker with --no-standby"),
                         ("process", "ours, process runtime")):
            if k not in figs:
                continue
            s = of(figs[k][m])
            target, limit = "-", None
            if judged:
                if k == "process":
                    target, limit = "<= 1.05x router", 1.05 * base.median
                else:
                    target, limit = "<= router + `docker start` cost", base.median + cost
            r.time_row(f"{m}: {label}", s, target=target, limit=limit, floor=base.median)
            ours_cpu = figs[k].get(CPU + m) or []
            if judged:
                if k == "process":
                    interval_row(r, f"  {m}: {label} / router, paired by round", "ratios",
                                 paired_ratios(figs[k][m], figs["router"][m]), "x")
                else:
                    interval_row(r, f"  {m}: {label} - router, paired by round", "differences",
                                 paired_differences(figs[k][m], figs["router"][m]), " s")
            if not (router_cpu and ours_cpu):
                continue
            r.time_row(f"  {m}: {label}, beyond its server's CPU time (wall - CPU)",
                       of(beyond_load(figs[k][m], ours_cpu)), digits=3)
            interval_row(r, f"  {m}: {label}, its server's CPU time / the router's child's, paired by round",
                         "ratios",
                         paired_ratios(ours_cpu, router_cpu), "x")
            if not judged:
                continue
            if k == "process":
                interval_row(r, f"  {m}: {label} / router, the load's CPU time evened out, paired by round",
                             "ratios",
                             evened_ratios(figs[k][m], ours_cpu, figs["router"][m], router_cpu), "x",
                             target="<= 1.05x", limit=1.05)
            elif cost_beyond is not None:
                ours_b = beyond_load(figs[k][m], ours_cpu)
                router_b = beyond_load(figs["router"][m], router_cpu)
                interval_row(r, f"  {m}: {label} - router, beyond the load, paired by round", "differences",
                             paired_differences(ours_b, router_b), " s",
                             target=f"<= {cost_beyond:.2f} s", limit=cost_beyond)
    for k, label in (("docker", "Docker"), ("docker-plain", "Docker with --no-standby"), ("process", "process runtime")):
        for what, values in sorted(parts.get(k, {}).items()):
            if values:
                r.time_row(f"  ours, {label}, {what}", of(values), digits=3)
    r.notes.extend(account(figs, parts, bare=bare.median, docker_start=docker_start.median))
    r.notes.append(
        f"Load average (1 min) at the start of each round: {', '.join(f'{x:.1f}' for x in loads)} on "
        f"{os.cpu_count()} cores; figures taken while it is high are not to be trusted.")
    r.notes.append("The router's argv (ours renders the same flags, plus `--model`, `--alias` and, with the KV "
                   "cache kept, `--slot-save-path`; `--swa-full` is in both): `" + " ".join(argv) + "`.")
    r.how.append(("router", f"`.venv/bin/python -m bench.run --only router{'' if runs == 6 else f' --rounds {runs}'} "
                  "--out docs/BENCHMARKS.md` "
                  f"(bench/router.py): {runs} rounds, each phase by phase (every server's cold start with the two "
                  "floors, then every swap, then every kill), the servers in turn (the first one rotating), A and B "
                  f"at rest {REST_S:.0f} s or more before each cold start, each server's cold-start and swap step "
                  f"{SETTLE_S:.0f} s long at least (what it left running, such as standby's arming, in its own "
                  "step), medians. Each server's own CPU time (itself and its descendants, user + system) is "
                  "read right after its first token (`server_cpu`); what a start takes beyond it is what the "
                  "supervisor adds (`beyond_load`: wall - CPU). 'evened out': each round's (the router's child's "
                  "CPU + ours beyond our server's) / the router's wall (`evened_ratios`); 'beyond the load': each "
                  "round's ours' wall - CPU less the router's, against the floors' same difference; 'its server's "
                  "CPU time / the router's child's' shows whether a start slowed the server's own work, which "
                  "evening out would hide. Paired rows give the median of the rounds with a distribution-free "
                  "95 % confidence interval (bench/stats.py `median_ci`)."))


def interval_row(r: Any, metric: str, what: str, values: list[float], unit: str, *, target: str = "-",
                 limit: float | None = None) -> None:
    """The median of per-round figures with its 95 % confidence interval (`median_ci`) and min-max; judged
    against `limit` when given."""
    if not values:
        return
    q = of(values)
    ci = median_ci(values)
    sign = "+" if unit == " s" else ""
    spread = f"95 % CI {ci.low:{sign}.2f} to {ci.high:{sign}.2f}; " if ci else ""
    r.value_row(f"{metric} (the median of {q.n} {what}; {'95 % CI, ' if ci else ''}min-max)",
                f"{q.median:{sign}.2f}{unit} ({spread}{min(values):{sign}.2f} to {max(values):{sign}.2f})",
                target=target, met=None if limit is None else q.median <= limit)


def beyond_load(wall: list[float], cpu: list[float]) -> list[float]:
    """Each start's wall time less its server's own CPU time: the part a supervisor (or the router) adds -
    the spawn, seeing the server ready, the proxy - and none of the load's own work, whose speed the host
    sets (`CPU`)."""
    return [w - c for w, c in zip(wall, cpu, strict=False)]


def evened_ratios(ours: list[float], ours_cpu: list[float], router: list[float],
                  router_cpu: list[float]) -> list[float]:
    """Each round's ratio to the router as if ours' server had done its load as fast as the router's child
    did in that round: (router's child CPU + ours beyond its own CPU) / router's wall. The load's speed
    varies by more than the 5 % target from one load to the next on these hosts, for the router's child as
    for ours, so the plain ratio's 95 % interval is wider than the target; what is left is what each adds.
    A start that slowed the server's own work is hidden by this, so the report shows that ratio beside it."""
    return [(rc + o - oc) / r for o, oc, r, rc in zip(ours, ours_cpu, router, router_cpu, strict=False) if r > 0]


def paired_differences(ours: list[float], router: list[float]) -> list[float]:
    """Each round's figure less the router's in the same round (`paired_ratios`, for an additive target)."""
    return [o - r for o, r in zip(ours, router, strict=False)]


def paired_ratios(ours: list[float], router: list[float]) -> list[float]:
    """Each round's figure over the router's in the same round (taken seconds apart, phase by phase): a
    drift of the host's speed over minutes moves both alike, where it moves one median and not the other."""
    return [o / r for o, r in zip(ours, router, strict=False) if r > 0]


def _med(values: list[float]) -> float | None:
    return of(values).median if values else None


def account(figs: dict[str, Figures], parts: dict[str, Figures], *, bare: float, docker_start: float) -> list[str]:
    """Where each of ours' cold start and swap goes beside the router's, from this run's medians."""
    out = []
    keys = {"cold start": "cold", "swap": "swap", "next request after an idle SIGKILL": "kill"}
    for m, key in keys.items():
        router = of(figs["router"][m]).median
        for k, label in (("docker", "Docker"), ("docker-plain", "Docker with --no-standby"), ("process", "process runtime")):
            if k not in figs:
                continue
            total = of(figs[k][m]).median
            p = {what.split(": ", 1)[1]: _med(v) for what, v in parts[k].items() if what.startswith(f"{key}: ")}
            begin = p.get("request -> start call logged")
            load = p.get("start call -> model's /health 200 (20 ms poll)")
            seen = p.get("model's /health 200 -> daemon logs RUNNING")
            pieces = []
            known = 0.0
            if begin is not None:
                known += begin
                what = "request -> start call (gateway, loop, scheduling, checks"
                what += ", the old model's KV save and graceful stop)" if key == "swap" else ")"
                pieces.append(f"{what} {begin:.2f} s")
                stop = p.get("old model's stop (its `stop` log line -> STOPPED)")
                save = p.get("old model's KV save (its `ms`)")
                if stop is not None:
                    pieces.append(f"of which the old model's stop {stop:.2f} s"
                                  + (f" and its KV save {save:.3f} s" if save is not None else ""))
            if load is not None:
                known += load
                extra = load - bare
                pieces.append(f"start call -> /health 200 {load:.2f} s (the bare process floor is {bare:.2f} s: "
                              f"{extra:+.2f} s{', the `docker start` floor is ' + f'{docker_start:.2f} s' if k.startswith('docker') else ''})")
            if seen is not None:
                known += seen
                restore = p.get("KV restore before RUNNING (its `ms`)")
                pieces.append(f"/health 200 -> RUNNING {seen:.3f} s (starting probe schedule, loop round trip"
                              + (f", KV restore {restore:.3f} s" if restore is not None else "") + ")")
            pieces.append(f"RUNNING -> first token, and what the log receipt times blur, {total - known:.2f} s")
            out.append(f"**{m}, ours with {label}**: {total:.2f} s against the router's {router:.2f} s "
                       f"({total - router:+.2f} s): " + "; ".join(pieces) + ".")
    return out


def bare_start(binary: str, floor: live.Floor) -> tuple[float, float]:
    """The same llama-server binary and flags as the floor container, started as a bare host process, to
    its first /health 200: what a start costs without Docker; and the process's CPU time then."""
    port = live.free_port()
    argv = list(floor.spec.argv)
    for i, a in enumerate(argv[:-1]):
        if a == "--model":
            argv[i + 1] = floor.spec.mounts[0].source
        elif a == "--port":
            argv[i + 1] = str(port)
        elif a == "--host":
            argv[i + 1] = "127.0.0.1"
    argv = [a for j, a in enumerate(argv) if a != "--slot-save-path" and (j == 0 or argv[j - 1] != "--slot-save-path")]
    t0 = time.monotonic()
    proc = subprocess.Popen([binary, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wall = live.until_healthy(port) - t0
        return wall, server_cpu(proc.pid)
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":      # pragma: no cover - `python -m bench.run --only router` is the entry point
    print(json.dumps(router_argv(tuple(sys.argv[1:]))))
ACCOUNT: list[str] = [
    "### Where the difference to the router comes from",
    "",
    "The notes above split this run's medians; what each part is:",
    "",
    "- **Seeing the model ready.** The router's child tells the router it is ready over a pipe "
    "(`CMD_CHILD_TO_ROUTER_STATE` on its stdout, tools/server/server-models.cpp): no polling. Since "
    "2026-11-30 the process runtime launches llama-server in the same child mode and reads the same line "
    "(runtime/process/readiness.py): the model is probed once when it says it has loaded, and polled only "
    "every 0.5 s before that, in case the word never comes. Docker's containers are polled on `/health`. "
    "Until issue 17 a starting model was probed every 0.5 s, so a ~1 s load was seen 0.25 s late on "
    "average (0.31 s of the gateway's cold start was this wait, issue 17). Now a container is probed at 5 % "
    "of the time its start has taken so far (20 ms at first, never more than 0.5 s; "
    "`lifecycle.starting_probe_interval`), and every 20 ms around the time its last loads took (0.8x the "
    "fastest of the last 5 to 1.25x the slowest; every 0.1 s before that window): the row `/health 200 -> "
    "daemon logs RUNNING` is that wait (for the process runtime, the word's), the probe, the KV restore and "
    "one loop round trip.",
    "- **Checks before every start.** A create checks the model file (SHA-256, kept per file identity), the "
    "image's tag (one engine call) and its binary (kept per image ID); since issue 17 a start in place (a swap "
    "back, a crash) is checked too, with no engine call: the model by `fstat`, the image by ID. The process "
    "runtime's binary is hashed once per file identity, by the verifier or by the launch through the descriptor "
    "it executes (before: twice per create, once per start). Together they are inside `request -> start call`.",
    "- **The old model's graceful stop, in a swap.** The router sends its child an exit command and waits "
    "for it to exit (its monitor polls a child whose pipe closed every 50 ms); ours saves the KV cache "
    "(`GET /slots`, `POST /slots/0?action=save`, the file hashed and renamed: the `KV save` row), has the "
    "gateway close its idle connections to it (llama-server's exit waits about 0.1 s while a client holds an "
    "idle keep-alive connection: 0.188 s against 0.084 s; the prober closes its own too, the KV keeper keeps none), then "
    "SIGTERM, and llama-server runs the same shutdown (the queue terminated, the HTTP server stopped) either "
    "way: the `old model's stop` row. The process runtime signals and waits through a pidfd. On Docker the "
    "stop ends once the container's process is gone (a pidfd too, where the daemon sees the engine's pids: "
    "runtime/docker/exitwatch.py), not when the engine's teardown of its network and mounts is over (measured "
    "0.08 s vs 0.21 s after SIGTERM): that teardown runs beside the next model's start. The stop timeout is "
    "only an upper bound (10 s here); no swap waited for it. Most of llama-server's own exit is unmapping its "
    "model file: 0.121 s of 0.13 s in one `munmap` of 246 MB (strace of a bare server on the AMD host), the "
    "same in the router's child.",
    "- **Docker.** `docker start` of a stopped container against fork/exec of the same binary with the same "
    "flags: the two floors' difference (the row `the measured cost of docker start`), which is why the "
    "Docker target is the router's time plus that cost. With standby (the default since 2026-11-30; before, "
    "`--standby`) that engine work is done before the request: the stopped on-demand model's container is "
    "started 2 s after its stop and held at `llama-gate` before llama-server's exec; the start is a byte "
    "written into its FIFO (runtime/docker/standby.py). With `--no-standby`, in a swap, the new model's container is started up to that gate beside the old model's save "
    "and stop (`Runtime.prepare`, on-demand containers are created held) and released after them: the "
    "`request -> start call` row then overlaps the engine's start, and `start call -> /health 200` holds "
    "what is left of it. What is left against the bare floor is the container's own confinement (cgroup, "
    "seccomp, overlay) and, in a swap, the old llama-server's exit beside the new container's start (0.02-0.07 s; "
    "the engine's teardown of the old container costs it nothing measurable: the swap-parts section).",
    "- **The first request's client.** The gateway and the prober keep a client per model port, made at each "
    "start; httpx built a TLS context for each (28 ms of CPU here), on the first request's path. They share "
    "one now (supervisor/loopback.py).",
    "- **Loop round trips.** A gateway request is an event to the loop, which schedules, stops, starts and "
    "publishes; a probe result is another. Each is a queue hand-off and one loop pass (milliseconds), inside "
    "`request -> start call` and `/health 200 -> RUNNING`.",
    "- **The next request after a SIGKILL.** The router sees its child's pipe close and starts a new child "
    "for the request. The process runtime holds a pidfd on the process: the exit is seen within milliseconds. "
    "Docker's is seen from the engine's `die` event, which comes after the engine's teardown of the dead "
    "container (0.12-0.18 s after the kill: the `request -> start call` row), and the restart is a "
    "`docker start`. The request meets the dead model first (Docker's port proxy closes the connection), "
    "waits for the daemon to see the exit, then for RUNNING, and goes out at once (the `RUNNING -> first "
    "token` row). Until 2026-11-30 the loop published the crashed model's route only after the engine's start "
    "in place returned, so the request went out again into the starting container's port and was answered "
    "when the model had loaded, or with a 503 `Loading model`: that row was 0.09-0.29 s on Docker.",
    "- **The load's own speed, and how the targets are judged.** A load here is one busy thread: its wall time "
    "is its CPU time, and that CPU time moves with the host from one load to the next, by more than the 5 % "
    "target (the bare floor's 12 loads on 2026-12-01: 1.16-1.62 s of CPU, wall within 0.02 s of it, no steal "
    "time). The router's child and ours each draw their own load's speed, so a round's plain ratio carries that "
    "noise and its 95 % interval is wider than the target (0.95-1.18x over 16 rounds that morning, 0.96-1.11x "
    "over 32; with 40 rounds the process runtime's cold start read 0.97-1.04x alone beside the router and "
    "0.95-1.11x beside all four servers, so judge the plain ratio with `--rounds 40`). What a supervisor adds "
    "is the rest: the rows `beyond its ... CPU time`. The judged rows even the load out: each round as if our "
    "server had loaded as fast as the router's child did in it (process runtime), or ours' time beyond the load "
    "against the router's and the floors' (Docker). That would hide a start that slowed the server's own work, "
    "so the row `its server's CPU time / the router's child's` is beside it; our KV restore (a few ms of the "
    "server's CPU before RUNNING) is inside the load there.",
]
