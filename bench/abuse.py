"""Hostile clients against a real llama-supervisord, and what the daemon does meanwhile (issue 15).

    python -m bench.run --only abuse --out docs/BENCHMARKS.md [--quick]

The attack, all on loopback, bounded in count and in time, stopping by itself:
    idle      connections that send half a request line and then nothing (slowloris); when the
              gateway closes one, it is opened again after a pause (an attacker that keeps trying)
    uploads   POSTs that declare a 16 MiB body, send 1 MiB of it, then stall; reopened likewise
Meanwhile (`Watch`): /health on a fresh connection every 100 ms, a real completion through the
gateway, `ctl status`, the daemon's RSS, and the bytes the daemon logs. The daemon runs at 1024
file descriptors (soft and hard), as under systemd's defaults without LimitNOFILE.

Shared by tests/abuse (a short run with assertions) and `make bench` (the figures in
docs/BENCHMARKS.md): the same code proves both.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import psutil

if TYPE_CHECKING:
    from bench.run import Report

HALF_REQUEST = b"GET /v1/mod"
UPLOAD_BYTES = 16 * 1024 * 1024
SENT_BYTES = 1024 * 1024
REOPEN_PAUSE_S = 0.5


@dataclass(frozen=True)
class Plan:
    idle: int = 2000
    uploads: int = 100
    seconds: float = 40.0


@dataclass
class Counters:
    opened: int = 0
    closed_by_server: int = 0
    refused: int = 0
    upload_answers: dict[int, int] = field(default_factory=dict)


def raise_own_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))


class Attack:
    """The hostile clients, in a process of their own: their work must not slow the watcher's
    measurements through the GIL. `stop()` closes every socket and collects the counts."""

    def __init__(self, host: str, port: int, plan: Plan) -> None:
        self.plan = plan
        ctx = multiprocessing.get_context("spawn")
        self._shared = ctx.RawArray("q", 3)              # opened, closed_by_server, refused
        self._parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_run_clients, args=(host, port, plan, self._shared, child),
                                 name="attack", daemon=True)
        self._answers: dict[int, int] = {}

    def start(self) -> Attack:
        self._proc.start()
        return self

    @property
    def counters(self) -> Counters:
        opened, closed, refused = self._shared[:]
        return Counters(opened, closed, refused, dict(self._answers))

    def stop(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._parent.send("stop")
                if self._parent.poll(60):
                    self._answers = self._parent.recv()
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()


def _run_clients(host: str, port: int, plan: Plan, shared: Any, conn: Any) -> None:
    raise_own_fd_limit(plan.idle + plan.uploads + 512)
    clients = _Clients(host, port, plan, shared)
    asyncio.run(clients.main(conn))


class _Clients:
    """The attack's sockets, on one asyncio loop (in the attack's process)."""

    def __init__(self, host: str, port: int, plan: Plan, shared: Any) -> None:
        self.host, self.port, self.plan, self.shared = host, port, plan, shared
        self.upload_answers: dict[int, int] = {}

    async def main(self, conn: Any) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), stop.set)
        deadline = time.monotonic() + self.plan.seconds + 60       # never outlives its run, whatever happens
        tasks = [asyncio.create_task(self._idle(deadline)) for _ in range(self.plan.idle)]
        tasks += [asyncio.create_task(self._upload(deadline)) for _ in range(self.plan.uploads)]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=deadline - time.monotonic())
        loop.remove_reader(conn.fileno())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(OSError):
            if conn.poll():
                conn.recv()
            conn.send(self.upload_answers)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            r, w = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.shared[2] += 1
            await asyncio.sleep(REOPEN_PAUSE_S)
            return None
        self.shared[0] += 1
        return r, w

    async def _idle(self, deadline: float) -> None:
        await self._hold(deadline, [HALF_REQUEST])

    async def _upload(self, deadline: float) -> None:
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {UPLOAD_BYTES}\r\n\r\n").encode()
        piece = b" " * 65536
        await self._hold(deadline, [head] + [piece] * (SENT_BYTES // len(piece)), answers=self.upload_answers)

    async def _hold(self, deadline: float, sends: list[bytes], answers: dict[int, int] | None = None) -> None:
        """Connect, send `sends`, then nothing until the gateway answers or closes; again after a pause."""
        while time.monotonic() < deadline:
            conn = await self._connect()
            if conn is None:
                continue
            r, w = conn
            try:
                for data in sends:
                    w.write(data)
                    await w.drain()
                answer = await r.read()             # stalled: until the gateway gives up on it
                if answers is None:
                    self.shared[1] += 1
                else:
                    code = int(answer[9:12]) if answer[:5] == b"HTTP/" and answer[9:12].isdigit() else 0
                    answers[code] = answers.get(code, 0) + 1
            except OSError:
                self.shared[1] += 1
            finally:
                w.close()
            await asyncio.sleep(REOPEN_PAUSE_S)


@dataclass
class Watch:
    """Samples the daemon while an attack runs: /health latencies, RSS, failures."""

    gateway: str
    pid: int
    health_s: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Watch:
        for target in (self._health, self._memory):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _health(self) -> None:
        host, port = self.gateway.removeprefix("http://").rsplit(":", 1)
        while not self._stop.wait(0.1):
            t0 = time.monotonic()
            try:
                code = health_once(host, int(port))
            except OSError as e:
                self.health_failures.append(type(e).__name__)
                continue
            if code != 200:
                self.health_failures.append(f"HTTP {code}")
                continue
            self.health_s.append(time.monotonic() - t0)

    def _memory(self) -> None:
        proc = psutil.Process(self.pid)
        while not self._stop.wait(0.25):
            with contextlib.suppress(psutil.Error):
                self.rss.append(proc.memory_info().rss)

    def p99(self) -> float:
        if not self.health_s:
            return float("inf")
        ordered = sorted(self.health_s)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def median(self) -> float:
        return statistics.median(self.health_s) if self.health_s else float("inf")


def health_once(host: str, port: int, timeout: float = 5.0) -> int:
    """GET /health on a fresh connection (what slowloris starves is the accept path), with a plain
    socket: an HTTP client library's own set-up (TLS contexts) would cost more than the answer."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data[9:12]) if data[:5] == b"HTTP/" and data[9:12].isdigit() else 0


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def completion(gateway: str, model: str, timeout: float = 60.0) -> httpx.Response:
    return httpx.post(f"{gateway}/v1/completions", timeout=timeout,
                      json={"model": model, "prompt": "The capital of France is", "max_tokens": 4,
                            "temperature": 0})


def wait_rss_back(pid: int, start: int, *, within: int, timeout: float) -> tuple[float, int]:
    """Seconds until the daemon's RSS is within `within` bytes of `start` (or the timeout), and the last RSS."""
    t0 = time.monotonic()
    now = rss(pid)
    while time.monotonic() - t0 < timeout:
        now = rss(pid)
        if now <= start + within:
            break
        time.sleep(0.25)
    return time.monotonic() - t0, now


# --- make bench: the figures of docs/BENCHMARKS.md's "Abuse" section ---------------------------------

def bench_abuse(r: Report, *, quick: bool = False) -> None:
    """One daemon at 1024 fds with 3 always-on models; /health at rest, then under the attack."""
    import json
    import subprocess
    import sys
    import tempfile
    import uuid
    from pathlib import Path

    import docker

    from bench import live
    from bench.stats import of
    from supervisor.artifacts.modelsrc import cache_path
    from tests.integration.daemon_harness import Daemon, model_yaml, remove_models, wait_for

    ctl = str(Path(sys.executable).with_name("llama-supervisorctl"))
    demo = cache_path(live.DEMO_SHA256, live.DEMO_FILE)
    tag = uuid.uuid4().hex[:6]
    names = [f"bench-abuse{tag}-{i}" for i in range(3)]   # bench*: CrowdWatch knows them as its own
    plan = Plan(idle=400, uploads=20, seconds=15) if quick else Plan()
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
        d = Path(tmp)
        for n in names:
            (d / f"{n}.yaml").write_text(model_yaml(n, None, demo, live.DEMO_SHA256, memory="400m",
                                                    fast_probes=False))
        daemon = Daemon(d, nofile=1024).start()
        sock = str(daemon.sockdir / "ctl.sock")

        def states() -> dict[str, str]:
            out = subprocess.run([ctl, "--socket", sock, "status", "--json"], capture_output=True, text=True,
                                 timeout=30)
            return {row["name"]: row["state"] for row in json.loads(out.stdout or "[]")}

        try:
            wait_for(lambda: sorted(states().values()) == ["RUNNING"] * 3, 180, "3 models RUNNING", step=0.5)
            assert daemon.proc is not None
            pid = daemon.proc.pid
            time.sleep(5)                                    # settle: the first probes, allocator warm-up
            rest = Watch(daemon.gateway, pid).start()
            time.sleep(10)
            rest.stop()
            rss0, log0, t0 = rss(pid), daemon.log_bytes, time.monotonic()
            port = int(daemon.gateway.rsplit(":", 1)[1])
            watch = Watch(daemon.gateway, pid).start()
            attack = Attack("127.0.0.1", port, plan).start()
            wait_for(lambda: attack.counters.opened >= plan.idle, 60, "the attack's connections")
            time.sleep(min(10.0, plan.seconds / 3))
            c0 = time.monotonic()
            answer = completion(daemon.gateway, names[0], timeout=120)
            completion_s = time.monotonic() - c0
            s0 = time.monotonic()
            during = states()
            status_s = time.monotonic() - s0
            time.sleep(max(0.0, plan.seconds - (time.monotonic() - t0)))
            attack.stop()
            watch.stop()
            log_growth = daemon.log_bytes - log0
            back_s, rss_after = wait_rss_back(pid, rss0, within=10 << 20, timeout=30)
            peak = max(watch.rss or [rss0])
            with daemon._lock:
                moved = [rec for t, rec in daemon.lines if t >= t0 and rec.get("event") == "transition"]
            after = states()
        finally:
            daemon.terminate()
            remove_models(client, names)
    mib = 1 << 20
    r.time_row("/health at rest, fresh connection", of(rest.health_s), unit="ms", scale=1000, digits=1)
    r.time_row(f"/health under {plan.idle} half-requests + {plan.uploads} stalled 16 MiB uploads",
               of(watch.health_s), target="p99 <= 50 ms", limit=0.050, on="p99",
               floor=rest.median(), unit="ms", scale=1000, digits=1)
    r.value_row("/health failures under attack", f"{len(watch.health_failures)} of "
                f"{len(watch.health_failures) + len(watch.health_s)}", target="0", met=not watch.health_failures)
    r.value_row("a completion through the gateway under attack", f"HTTP {answer.status_code} in {completion_s:.2f} s",
                target="200", met=answer.status_code == 200)
    r.value_row("`ctl status` under attack", f"answered in {status_s:.2f} s: {sorted(set(during.values()))}",
                target="answers", met=bool(during))
    r.value_row("model transitions during and after the attack", f"{len(moved)}; after: {sorted(set(after.values()))}",
                target="0, all RUNNING", met=not moved and set(after.values()) == {"RUNNING"})
    r.value_row("daemon RSS growth under attack (peak - start)", f"{(peak - rss0) / mib:.1f} MiB "
                f"(start {rss0 / mib:.1f} MiB)", target="<= 100 MiB", met=peak - rss0 <= 100 * mib)
    r.value_row("daemon RSS after the attack", f"{rss_after / mib:.1f} MiB, {back_s:.1f} s after it ended",
                target="within 10 MiB of start within 30 s", met=rss_after <= rss0 + 10 * mib)
    r.value_row("daemon log growth during the attack", f"{log_growth / 1024:.1f} KiB", target="<= 1 MiB",
                met=log_growth <= mib)
    c = attack.counters
    r.notes.append(f"The attacker opened {c.opened} connections in {plan.seconds:.0f} s (the gateway closed "
                   f"{c.closed_by_server}; {c.refused} connects failed); stalled uploads were answered "
                   f"{dict(sorted(c.upload_answers.items()))} (0: closed without an answer).")
    r.how.append(("abuse", "`python -m bench.run --only abuse --out docs/BENCHMARKS.md`: a daemon under "
                  "`RLIMIT_NOFILE` 1024/1024 with 3 always-on demo models; /health on a fresh connection every "
                  "100 ms for 10 s at rest, then during the attack of bench/abuse.py (the same code as "
                  "tests/abuse)."))
