"""Probe outcomes from llama-server's /health answers, via httpx.MockTransport."""

from __future__ import annotations

import queue
import threading

import httpx

from supervisor.core.events import Event, ProbeResult
from supervisor.core.lifecycle import ProbeOutcome
from supervisor.daemon.health import Prober, health_url, probe_once


def client(handler):  # type: ignore[no-untyped-def]
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_200_is_ok() -> None:
    c = client(lambda r: httpx.Response(200, json={"status": "ok"}))
    assert probe_once(c, "http://127.0.0.1:1/health", 1)[0] is ProbeOutcome.OK


def test_503_loading_is_progress() -> None:
    c = client(lambda r: httpx.Response(503, json={"error": {"code": 503, "message": "Loading model"}}))
    assert probe_once(c, "http://127.0.0.1:1/health", 1)[0] is ProbeOutcome.LOADING


def test_other_503_500_and_timeouts_fail() -> None:
    assert probe_once(client(lambda r: httpx.Response(503, text="busy")), "http://x/health", 1)[0] \
        is ProbeOutcome.FAILED
    assert probe_once(client(lambda r: httpx.Response(500)), "http://x/health", 1)[0] is ProbeOutcome.FAILED

    def hang(r: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=r)

    outcome, detail = probe_once(client(hang), "http://x/health", 2)
    assert outcome is ProbeOutcome.FAILED and "timed out" in detail

    def refused(r: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=r)

    assert probe_once(client(refused), "http://x/health", 2)[0] is ProbeOutcome.FAILED


def test_url_uses_loopback_for_wildcard() -> None:
    assert health_url("0.0.0.0", 8081) == "http://127.0.0.1:8081/health"
    assert health_url("192.168.1.5", 80) == "http://192.168.1.5:80/health"


def test_prober_posts_results_and_never_overlaps() -> None:
    gate = threading.Event()

    def slow(r: httpx.Request) -> httpx.Response:
        gate.wait(5)
        return httpx.Response(200)

    q: queue.Queue[Event] = queue.Queue()
    p = Prober(q.put, client=client(slow))
    assert p.submit("a", "c1", host_ip="127.0.0.1", port=1, timeout_s=1)
    assert not p.submit("a", "c1", host_ip="127.0.0.1", port=1, timeout_s=1)
    gate.set()
    ev = q.get(timeout=5)
    assert isinstance(ev, ProbeResult) and ev.outcome is ProbeOutcome.OK and ev.container_id == "c1"
    p.close()


def test_the_kept_alive_probe_connection_is_closed_on_release() -> None:
    """Probes of a starting model reuse one connection; before a graceful stop the loop releases it, since
    llama-server's exit waits ~0.1 s while a client holds an idle keep-alive connection."""
    import socketserver
    import time
    from http.server import BaseHTTPRequestHandler

    opened, closed = [], []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            opened.append(1)

        def finish(self) -> None:
            super().finish()
            closed.append(1)

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    q: queue.Queue[Event] = queue.Queue()
    p = Prober(q.put)
    try:
        for _ in range(3):
            assert p.submit("m", "c1", host_ip="127.0.0.1", port=port, timeout_s=2)
            r = q.get(timeout=5)
            assert isinstance(r, ProbeResult) and r.outcome is ProbeOutcome.OK
        assert len(opened) == 1 and not closed          # one connection, kept alive between probes

        p.release("127.0.0.1", port)

        deadline = time.monotonic() + 2
        while not closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert closed == [1]
    finally:
        p.close()
        srv.shutdown()
        srv.server_close()
