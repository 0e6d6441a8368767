"""HTTP probes of llama-server's /health, run off the loop thread.

200 is healthy, 503 with "Loading model" is progress, anything else (another
status, refused, timed out) is a failure. A paused container does not answer, so
it shows as timeouts. A probe the daemon could not make because it ran out of
descriptors or memory (EMFILE, ENFILE, ENOMEM, ENOBUFS anywhere in the error's
chain) is INCONCLUSIVE: it says nothing about the model. Results go back to the
loop as ProbeResult events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from supervisor import loopback
from supervisor.core.events import Event, ProbeResult
from supervisor.core.lifecycle import ProbeOutcome
from supervisor.errors import exhaustion


def health_url(host_ip: str, port: int) -> str:
    host = "127.0.0.1" if host_ip in ("", "0.0.0.0") else ("[::1]" if host_ip == "::" else host_ip)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/health"


def classify_error(e: BaseException, timeout_s: float) -> tuple[ProbeOutcome, str]:
    """A probe that raised: the daemon's own exhaustion is INCONCLUSIVE, everything else the model's FAILED."""
    if (os_error := exhaustion(e)) is not None:
        return ProbeOutcome.INCONCLUSIVE, f"daemon-side: {os_error.strerror or os_error} (not the model's failure)"
    if isinstance(e, httpx.TimeoutException):
        return ProbeOutcome.FAILED, f"timed out after {timeout_s:g}s"
    if isinstance(e, httpx.HTTPError):
        return ProbeOutcome.FAILED, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return ProbeOutcome.FAILED, f"probe error: {e!r}"


def probe_once(client: httpx.Client, url: str, timeout_s: float) -> tuple[ProbeOutcome, str]:
    try:
        r = client.get(url, timeout=timeout_s)
    except (httpx.HTTPError, OSError) as e:
        return classify_error(e, timeout_s)
    if r.status_code == 200:
        return ProbeOutcome.OK, "200"
    if r.status_code == 503 and "loading model" in r.text.lower():
        return ProbeOutcome.LOADING, "503 loading model"
    return ProbeOutcome.FAILED, f"HTTP {r.status_code}: {r.text[:120]}"


class Prober:
    """A small pool that probes and posts; at most one probe in flight per model."""

    def __init__(
        self,
        post: Callable[[Event], None],
        *,
        client: httpx.Client | None = None,
        workers: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._post = post
        self._shared = client                # tests: one client for every port, never released
        # One kept-alive client per health URL (never a proxy for a local probe): a starting model is
        # probed every 20 ms or so, and a new connection per probe made its start ~0.03 s slower (4 A/B runs of
        # 8-12 starts). Before a graceful stop the loop has it closed (`release`): llama-server's exit on
        # SIGTERM waits about 0.1 s while a client holds an idle keep-alive connection (0.188 s vs 0.084 s).
        self._clients: dict[str, httpx.Client] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        # Runs after a healthy probe, before its result is posted (KV caches restored before the model
        # turns RUNNING: kvkeeper.py): (model, container ID, health URL). Must not raise.
        self.on_healthy: Callable[[str, str, str], None] | None = None

    def in_flight(self, model: str) -> bool:
        with self._lock:
            return model in self._in_flight

    def submit(self, model: str, container_id: str, *, host_ip: str, port: int, timeout_s: float) -> bool:
        """False when a probe for this model is still running."""
        with self._lock:
            if model in self._in_flight:
                return False
            self._in_flight.add(model)
        self._pool.submit(self._run, model, container_id, health_url(host_ip, port), timeout_s)
        return True

    def _client_for(self, url: str) -> httpx.Client:
        if self._shared is not None:
            return self._shared
        with self._lock:
            c = self._clients.get(url)
            if c is None:
                c = self._clients[url] = httpx.Client(trust_env=False, verify=loopback.tls_context())
            return c

    def release(self, host_ip: str, port: int) -> None:
        """Close the client of that port's health URL (a probe in flight on it fails: the model is stopping)."""
        with self._lock:
            c = self._clients.pop(health_url(host_ip, port), None)
        if c is not None:
            c.close()

    def _run(self, model: str, container_id: str, url: str, timeout_s: float) -> None:
        t0 = self._clock()
        try:
            outcome, detail = probe_once(self._client_for(url), url, timeout_s)
            latency = self._clock() - t0
            if outcome is ProbeOutcome.OK and self.on_healthy is not None:
                self.on_healthy(model, container_id, url)
        except Exception as e:  # never lose a probe: a bug here must still be reported (EMFILE: inconclusive)
            outcome, detail = classify_error(e, timeout_s)
            latency = self._clock() - t0
        finally:
            with self._lock:
                self._in_flight.discard(model)
        self._post(ProbeResult(model, container_id, outcome, latency, detail))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
        if self._shared is not None:
            self._shared.close()
