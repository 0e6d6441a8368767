"""Prometheus metrics: what a scrape of the exposition text shows."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from supervisor.control.api import MetricsSink
from supervisor.metrics import STATES, PrometheusMetrics


def samples(metrics: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_state_is_one_hot() -> None:
    m = PrometheusMetrics()
    m.model_state("gemma", "STARTING")
    m.model_state("gemma", "RUNNING")
    got = {state: samples(m)[("llama_supervisor_model_state", (("model", "gemma"), ("state", state)))]
           for state in STATES}
    assert got == {s: (1.0 if s == "RUNNING" else 0.0) for s in STATES}


def test_counters_gauges_histograms() -> None:
    m: MetricsSink = PrometheusMetrics()
    m.restart("gemma", "health failed 3x")
    m.restart("gemma", "exited 137")
    m.exit("gemma", 137, oom_killed=True)
    m.exit("gemma", None, oom_killed=False)
    m.probe("gemma", 0.012, ok=True)
    m.probe("gemma", 2.0, ok=False)
    m.verification_failure("gemma", "image")
    m.reconcile(0.004)
    assert isinstance(m, PrometheusMetrics)
    s = samples(m)
    g = (("model", "gemma"),)
    assert s[("llama_supervisor_restarts_total", g)] == 2
    assert s[("llama_supervisor_last_exit_code", g)] == 137
    assert s[("llama_supervisor_oom_kills_total", g)] == 1
    assert s[("llama_supervisor_verification_failures_total", (("model", "gemma"), ("what", "image")))] == 1
    ok = (("model", "gemma"), ("result", "ok"))
    assert s[("llama_supervisor_health_probe_duration_seconds_count", ok)] == 1
    assert s[("llama_supervisor_health_probe_duration_seconds_bucket", (("le", "0.025"), *ok))] == 1
    assert s[("llama_supervisor_reconcile_duration_seconds_count", ())] == 1


def test_forget_drops_every_series_of_a_model() -> None:
    m = PrometheusMetrics()
    for model in ("gemma", "qwen"):
        m.model_state(model, "RUNNING")
        m.restart(model, "crash")
        m.exit(model, 1, oom_killed=True)
        m.probe(model, 0.1, ok=True)
        m.verification_failure(model, "model")
    m.forget("qwen")
    text = m.exposition().decode()
    assert 'model="qwen"' not in text
    assert 'model="gemma"' in text


def test_two_instances_do_not_share_a_registry() -> None:
    a, b = PrometheusMetrics(), PrometheusMetrics()
    a.restart("gemma", "crash")
    assert "llama_supervisor_restarts_total{" not in b.exposition().decode()


def test_serve_on_a_local_port() -> None:
    m = PrometheusMetrics()
    m.model_state("gemma", "RUNNING")
    m.serve(0)
    try:
        assert m.port
        text = httpx.get(f"http://127.0.0.1:{m.port}/metrics").text
        assert 'llama_supervisor_model_state{model="gemma",state="RUNNING"} 1.0' in text
    finally:
        m.close()


def test_drains_and_stale_retries_are_counted_and_forgotten() -> None:
    m = PrometheusMetrics()
    m.drained("gemma", 3, timed_out=False)
    m.drained("gemma", 1, timed_out=True)
    m.gateway_stale_retry("gemma")
    m.model_state("gemma", "DRAINING")
    s = samples(m)
    g = (("model", "gemma"),)
    assert s[("llama_supervisor_drained_requests_total", g)] == 4
    assert s[("llama_supervisor_drains_total", (("model", "gemma"), ("outcome", "drained")))] == 1
    assert s[("llama_supervisor_drains_total", (("model", "gemma"), ("outcome", "timed_out")))] == 1
    assert s[("llama_supervisor_gateway_stale_retries_total", g)] == 1
    assert s[("llama_supervisor_model_state", (("model", "gemma"), ("state", "DRAINING")))] == 1
    m.forget("gemma")
    assert 'model="gemma"' not in m.exposition().decode()
