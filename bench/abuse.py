"""Hostile clients against a real llama-supervisord, and what the daemon does meanwhile (issue 15).

    python -m bench.abuse [--idle 2000] [--uploads 100] [--seconds 40]

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
import resource
import statistics
import threading
import time
from dataclasses import dataclass, field

import httpx
import psutil

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
    """The hostile clients, on an asyncio loop in their own thread; `stop()` closes every socket."""

    def __init__(self, host: str, port: int, plan: Plan) -> None:
        self.host, self.port, self.plan = host, port, plan
        self.counters = Counters()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="attack", daemon=True)
        raise_own_fd_limit(plan.idle + plan.uploads + 512)

    def start(self) -> Attack:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        deadline = time.monotonic() + self.plan.seconds + 60       # never outlives its run, whatever happens
        tasks = [asyncio.create_task(self._idle(deadline)) for _ in range(self.plan.idle)]
        tasks += [asyncio.create_task(self._upload(deadline)) for _ in range(self.plan.uploads)]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=deadline - time.monotonic())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            r, w = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.counters.refused += 1
            await asyncio.sleep(REOPEN_PAUSE_S)
            return None
        self.counters.opened += 1
        return r, w

    async def _idle(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            conn = await self._connect()
            if conn is None:
                continue
            r, w = conn
            try:
                w.write(HALF_REQUEST)
                await w.drain()
                await r.read()                      # until the gateway gives up on it
                self.counters.closed_by_server += 1
            except OSError:
                self.counters.closed_by_server += 1
            finally:
                w.close()
            await asyncio.sleep(REOPEN_PAUSE_S)

    async def _upload(self, deadline: float) -> None:
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {UPLOAD_BYTES}\r\n\r\n").encode()
        piece = b" " * 65536
        while time.monotonic() < deadline:
            conn = await self._connect()
            if conn is None:
                continue
            r, w = conn
            try:
                w.write(head)
                for _ in range(SENT_BYTES // len(piece)):
                    w.write(piece)
                    await w.drain()
                answer = await r.read()             # stalled: wait for the gateway's answer or close
                code = int(answer[9:12]) if answer[:5] == b"HTTP/" and answer[9:12].isdigit() else 0
                self.counters.upload_answers[code] = self.counters.upload_answers.get(code, 0) + 1
            except OSError:
                self.counters.closed_by_server += 1
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
        while not self._stop.wait(0.1):
            t0 = time.monotonic()
            try:
                # a fresh connection each time: what slowloris starves is the accept path
                code = httpx.get(f"{self.gateway}/health", timeout=5.0).status_code
                if code != 200:
                    self.health_failures.append(f"HTTP {code}")
            except httpx.HTTPError as e:
                self.health_failures.append(type(e).__name__)
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
