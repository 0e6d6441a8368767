"""The gateway under idle half-requests and stalled uploads (issue 15, items 3 and 5), on its own.

    python -m bench.gateway_flood [--nofile 1024] [--half 2000] [--uploads 100] [--hold 25] [--reconnect]

A gateway process of its own (tests/unit/gateway_child.py: the real GatewayServer and app over a fake
backend whose one model, "m", is a tiny HTTP server in that process) with RLIMIT_NOFILE at --nofile.
This process opens --half connections that each send half a request line and --uploads that each
declare 16 MiB, send all of it but the last byte and stall (--reconnect: a half-request the gateway
closes is opened again at once, the most hostile form). Meanwhile it measures /health on a fresh
connection every 20 ms, sends one real completion, and samples the gateway's RSS; then it lets go
and waits up to 30 s for the RSS to come back. It prints what the lead's proof asks for:
/health p50/p99, the completion, RSS start/peak/after, and how much the gateway's log grew.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import httpx
import psutil

from bench.stats import of

MiB = 1024 * 1024
HALF = b"POST /v1/chat/completions HT"


@dataclass
class Figures:
    health_ms: list[float]
    health_failed: int
    completion: str
    rss_start: int
    rss_peak: int
    rss_after: int
    rss_back_s: float | None
    log_bytes: int
    uploads_answered: dict[str, int]


def _upload(port: int, held: list[socket.socket], answers: dict[str, int], lock: threading.Lock) -> None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
    except OSError:
        with lock:
            answers["connect failed"] = answers.get("connect failed", 0) + 1
        return
    with lock:
        held.append(s)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (16 * MiB))
    piece = b'{"model": "m", "pad": "' + b"x" * (MiB - 23)
    try:
        s.sendall(head)
        sent = 0
        while sent < 16 * MiB - 1:
            n = min(len(piece), 16 * MiB - 1 - sent)
            s.sendall(piece[:n])
            sent += n
        s.settimeout(60)
        status = s.recv(64).split(b" ")[1].decode()
    except (OSError, IndexError) as e:
        status = type(e).__name__
    with lock:
        answers[status] = answers.get(status, 0) + 1


def _health(port: int) -> bool:
    """GET /health on a new connection (a raw socket: the figure is the gateway's, not a client's setup)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in data
    except OSError:
        return False


class HalfRequests:
    """`n` connections holding half a request line; with `reconnect`, one closed is opened again."""

    def __init__(self, port: int, n: int, reconnect: bool) -> None:
        self.port, self.n, self.reconnect = port, n, reconnect
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.opened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(HALF)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
            self.opened += 1
        except OSError:
            pass

    def _run(self) -> None:
        for _ in range(self.n):
            self._open()
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self.sel.unregister(s)
                    s.close()
                    if self.reconnect and not self.stop.is_set():
                        self._open()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()


def run(*, nofile: int, half: int, uploads: int, hold_s: float, reconnect: bool) -> Figures:
    log = tempfile.NamedTemporaryFile(prefix="gateway-flood-", suffix=".log", delete=False)
    child = subprocess.Popen([sys.executable, "-m", "tests.unit.gateway_child", "--nofile", str(nofile)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        proc = psutil.Process(child.pid)
        url = f"http://127.0.0.1:{port}"
        completion = {"model": "m", "prompt": "hi", "max_tokens": 1}
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as warm:
            for _ in range(20):
                warm.get("/health")
                warm.post("/v1/completions", json=completion)
        time.sleep(1)
        rss_start = proc.memory_info().rss
        log_start = os.path.getsize(log.name)

        peak = [rss_start]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        halves = HalfRequests(port, half, reconnect)
        halves.thread.start()
        held: list[socket.socket] = []
        answers: dict[str, int] = {}
        lock = threading.Lock()
        senders = [threading.Thread(target=_upload, args=(port, held, answers, lock), daemon=True)
                   for _ in range(uploads)]
        for t in senders:
            t.start()
        health: list[float] = []
        failed = 0
        done_completion = ""
        t_end = time.monotonic() + hold_s
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            ok = _health(port)
            if ok:
                health.append((time.perf_counter() - t0) * 1000)
            else:
                failed += 1
            if not done_completion and time.monotonic() > t_end - hold_s / 2:
                try:
                    with httpx.Client(base_url=url, timeout=10, trust_env=False) as c:
                        r = c.post("/v1/completions", json=completion)
                    done_completion = f"{r.status_code} {r.json()['choices'][0]['text']!r}" if r.status_code == 200 \
                        else f"{r.status_code} {r.text[:120]}"
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    done_completion = f"failed: {type(e).__name__}"
            time.sleep(0.02)
        halves.close()
        with lock:
            for s in held:
                s.close()
        for t in senders:
            t.join(5)
        back_s = None
        t_let_go = time.monotonic()
        while time.monotonic() - t_let_go < 30:
            if proc.memory_info().rss <= rss_start + 10 * MiB:
                back_s = time.monotonic() - t_let_go
                break
            time.sleep(0.25)
        sampling.set()
        sampler.join()
        return Figures(health, failed, done_completion or "not sent", rss_start, peak[0],
                       proc.memory_info().rss, back_s, os.path.getsize(log.name) - log_start, answers)
    finally:
        try:
            child.communicate(b"", timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
        os.unlink(log.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nofile", type=int, default=1024)
    ap.add_argument("--half", type=int, default=2000)
    ap.add_argument("--uploads", type=int, default=100)
    ap.add_argument("--hold", type=float, default=25.0, help="seconds of attack while /health is measured")
    ap.add_argument("--reconnect", action="store_true", help="reopen each half-request the gateway closes")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    f = run(nofile=a.nofile, half=a.half, uploads=a.uploads, hold_s=a.hold, reconnect=a.reconnect)
    h = of([x / 1000 for x in f.health_ms]) if f.health_ms else None
    out = {
        "setup": f"{a.half} half-requests{' (reconnecting)' if a.reconnect else ''} + {a.uploads} stalled 16 MiB"
                 f" uploads, gateway at {a.nofile} fds, {a.hold:g} s",
        "health_p50_ms": round(h.median * 1000, 1) if h else None,
        "health_p99_ms": round(h.pct(99) * 1000, 1) if h else None,
        "health_max_ms": round(max(f.health_ms), 1) if f.health_ms else None,
        "health_ok": len(f.health_ms), "health_failed": f.health_failed,
        "completion": f.completion,
        "rss_start_mib": round(f.rss_start / MiB, 1), "rss_peak_mib": round(f.rss_peak / MiB, 1),
        "rss_growth_mib": round((f.rss_peak - f.rss_start) / MiB, 1),
        "rss_after_mib": round(f.rss_after / MiB, 1),
        "rss_back_within_10mib_s": None if f.rss_back_s is None else round(f.rss_back_s, 1),
        "log_growth_bytes": f.log_bytes,
        "uploads_answered": f.uploads_answered,
    }
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:28s} {v}")


if __name__ == "__main__":
    main()
