"""Prometheus metrics for the daemon (opt-in): a MetricsSink over its own CollectorRegistry, served on a local port."""

from __future__ import annotations

import threading
from collections import defaultdict
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from supervisor.errors import ConfigError

STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "DRAINING")
_PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
_RECONCILE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)
_KV_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PrometheusMetrics:
    """Implements control.api.MetricsSink; every series is labelled by model and dropped by `forget`."""

    def __init__(self, *, namespace: str = "llama_supervisor") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.state = Gauge("model_state", "1 for the model's current state, 0 for the others",
                           ["model", "state"], namespace=ns, registry=r)
        self.restarts = Counter("restarts", "Container restarts by the supervisor",
                                ["model"], namespace=ns, registry=r)
        self.probe_latency = Histogram("health_probe_duration_seconds", "Latency of /health probes",
                                       ["model", "result"], namespace=ns, registry=r, buckets=_PROBE_BUCKETS)
        self.last_exit_code = Gauge("last_exit_code", "Exit code of the model's last container exit",
                                    ["model"], namespace=ns, registry=r)
        self.oom_kills = Counter("oom_kills", "Container exits the kernel's OOM killer caused",
                                 ["model"], namespace=ns, registry=r)
        self.verification_failures = Counter(
            "verification_failures", "Image or model file checks that did not match the pins",
            ["model", "what"], namespace=ns, registry=r)
        self.reconcile_duration = Histogram("reconcile_duration_seconds", "Time one reconcile pass took",
                                            namespace=ns, registry=r, buckets=_RECONCILE_BUCKETS)
        self.evictions = Counter("evictions", "On-demand models stopped by the scheduler, by reason (memory, idle)",
                                 ["model", "reason"], namespace=ns, registry=r)
        self.swaps = Counter("swaps", "On-demand starts that waited for other models to make room",
                             ["model"], namespace=ns, registry=r)
        self.swap_wait = Histogram("swap_wait_seconds", "How long a swap's oldest request had waited when its"
                                   " model was started", ["model"], namespace=ns, registry=r, buckets=_WAIT_BUCKETS)
        self.requests = Counter("gateway_requests", "Gateway requests by model and HTTP status",
                                ["model", "code"], namespace=ns, registry=r)
        self.queue_depth = Gauge("gateway_queue_depth", "Requests waiting for the model to be ready",
                                 ["model"], namespace=ns, registry=r)
        self.start_wait = Histogram("gateway_start_wait_seconds", "Time a request waited for its model to be ready",
                                    ["model"], namespace=ns, registry=r, buckets=_WAIT_BUCKETS)
        self.bytes_streamed = Counter("gateway_response_bytes", "Response bytes the gateway passed to clients",
                                      ["model"], namespace=ns, registry=r)
        self.kv_ops = Counter("kv_cache_operations", "KV cache saves and restores by outcome"
                              " (ok, failed, skipped, rejected)", ["model", "op", "outcome"], namespace=ns, registry=r)
        self.kv_bytes = Counter("kv_cache_bytes", "Bytes of KV cache saved and restored", ["model", "op"],
                                namespace=ns, registry=r)
        self.kv_seconds = Histogram("kv_cache_duration_seconds", "Time one slot's KV cache save or restore took",
                                    ["model", "op"], namespace=ns, registry=r, buckets=_KV_BUCKETS)
        self.drained_requests = Counter(
            "drained_requests", "Requests in flight on a container being replaced (manifest change), let finish",
            ["model"], namespace=ns, registry=r)
        self.drains = Counter("drains", "Drains before a recreate, by outcome (drained, timed_out)",
                              ["model", "outcome"], namespace=ns, registry=r)
        self.handovers = Counter(
            "handovers", "Start-first recreates by result (switched: the route moved to the new container;"
            " fell_back: it failed, stop-first instead; cancelled: the manifest changed again)",
            ["model", "result"], namespace=ns, registry=r)
        self.stale_retries = Counter(
            "gateway_stale_retries", "Requests sent again on a new connection: a kept-alive one was closed by"
            " the model as they went out", ["model"], namespace=ns, registry=r)
        self._labels: dict[str, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = defaultdict(set)
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _track(self, model: str, metric: MetricWrapperBase, *labels: str) -> None:
        with self._lock:
            self._labels[model].add((metric, labels))

    # --- MetricsSink ----------------------------------------------------------------------------

    def model_state(self, model: str, state: str) -> None:
        for s in dict.fromkeys((*STATES, state)):
            self.state.labels(model, s).set(1 if s == state else 0)
            self._track(model, self.state, model, s)

    def restart(self, model: str, reason: str) -> None:
        # The reason is free text: as a label it would grow series without bound; the logs carry it.
        self.restarts.labels(model).inc()
        self._track(model, self.restarts, model)

    def probe(self, model: str, latency_s: float, ok: bool) -> None:
        result = "ok" if ok else "failed"
        self.probe_latency.labels(model, result).observe(latency_s)
        self._track(model, self.probe_latency, model, result)

    def exit(self, model: str, code: int | None, oom_killed: bool) -> None:
        if code is not None:
            self.last_exit_code.labels(model).set(code)
            self._track(model, self.last_exit_code, model)
        if oom_killed:
            self.oom_kills.labels(model).inc()
            self._track(model, self.oom_kills, model)

    def verification_failure(self, model: str, what: str) -> None:
        self.verification_failures.labels(model, what).inc()
        self._track(model, self.verification_failures, model, what)

    def reconcile(self, duration_s: float) -> None:
        self.reconcile_duration.observe(duration_s)

    def eviction(self, model: str, reason: str) -> None:
        self.evictions.labels(model, reason).inc()
        self._track(model, self.evictions, model, reason)

    def kv_cache(self, model: str, op: str, outcome: str, nbytes: int, seconds: float) -> None:
        """A KV cache save or restore (op) of one slot: its outcome, bytes and time."""
        self.kv_ops.labels(model, op, outcome).inc()
        self._track(model, self.kv_ops, model, op, outcome)
        if outcome == "ok":
            self.kv_bytes.labels(model, op).inc(nbytes)
            self.kv_seconds.labels(model, op).observe(seconds)
            self._track(model, self.kv_bytes, model, op)
            self._track(model, self.kv_seconds, model, op)

    def drained(self, model: str, requests: int, timed_out: bool) -> None:
        outcome = "timed_out" if timed_out else "drained"
        self.drains.labels(model, outcome).inc()
        self.drained_requests.labels(model).inc(requests)
        self._track(model, self.drains, model, outcome)
        self._track(model, self.drained_requests, model)

    def handover(self, model: str, result: str) -> None:
        self.handovers.labels(model, result).inc()
        self._track(model, self.handovers, model, result)

    def swap(self, model: str, wait_s: float) -> None:
        self.swaps.labels(model).inc()
        self.swap_wait.labels(model).observe(wait_s)
        self._track(model, self.swaps, model)
        self._track(model, self.swap_wait, model)

    # --- the gateway's (called from its thread) -------------------------------------------------

    def gateway_request(self, model: str, code: int) -> None:
        self.requests.labels(model, str(code)).inc()
        self._track(model, self.requests, model, str(code))

    def gateway_queue(self, model: str, depth: int) -> None:
        self.queue_depth.labels(model).set(depth)
        self._track(model, self.queue_depth, model)

    def gateway_wait(self, model: str, seconds: float) -> None:
        self.start_wait.labels(model).observe(seconds)
        self._track(model, self.start_wait, model)

    def gateway_bytes(self, model: str, n: int) -> None:
        self.bytes_streamed.labels(model).inc(n)
        self._track(model, self.bytes_streamed, model)

    def gateway_stale_retry(self, model: str) -> None:
        self.stale_retries.labels(model).inc()
        self._track(model, self.stale_retries, model)

    def forget(self, model: str) -> None:
        """Drop every series of a model whose manifest disappeared."""
        with self._lock:
            tracked = self._labels.pop(model, set())
        for metric, labels in tracked:
            try:
                metric.remove(*labels)
            except KeyError:
                pass

    # --- exposition -----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text a scrape gets."""
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve /metrics on addr:port from a daemon thread (local only unless addr says otherwise)."""
        if self._server is not None:
            return
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {addr}:{port}: {e}") from e

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server is not None else None

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
