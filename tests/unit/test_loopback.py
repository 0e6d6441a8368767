"""The loopback clients share one TLS context (supervisor.loopback).

httpx builds a TLS context (the CA bundle loaded: about 28 ms of CPU here) for every client it makes,
even for plain HTTP. The gateway and the prober make a client per model port, at every start, so
without the shared context each cold start paid that on its first request and its first probe. What
is checked is the context each client's connection pool holds: httpcore keeps it as `_ssl_context`
(if that name ever changes, these tests fail loudly rather than pass).
"""

from __future__ import annotations

import queue
import ssl

import httpx

from supervisor import loopback
from supervisor.control.api import NullMetrics
from supervisor.daemon.health import Prober
from supervisor.daemon.kvkeeper import KvKeeper
from supervisor.daemon.kvstore import KvStore
from supervisor.gateway.proxy import Upstream


def _context(client: httpx.Client | httpx.AsyncClient) -> ssl.SSLContext:
    ctx = client._transport._pool._ssl_context  # type: ignore[union-attr]
    assert isinstance(ctx, ssl.SSLContext)
    return ctx


def test_the_context_is_built_once() -> None:
    assert loopback.tls_context() is loopback.tls_context()


def test_the_gateways_per_port_clients_share_it() -> None:
    up = Upstream()
    contexts = {id(_context(up.client(port))) for port in (41001, 41002, 41003)}
    assert contexts == {id(loopback.tls_context())}
    assert _context(up.fresh()) is loopback.tls_context()


def test_the_probers_per_url_clients_share_it() -> None:
    p = Prober(queue.Queue().put)
    try:
        a = p._client_for("http://127.0.0.1:41001/health")
        b = p._client_for("http://127.0.0.1:41002/health")
        assert a is not b
        assert _context(a) is _context(b) is loopback.tls_context()
    finally:
        p.close()


def test_the_kv_keepers_client_shares_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    keeper = KvKeeper(KvStore(tmp_path), {}, NullMetrics())
    assert _context(keeper._client) is loopback.tls_context()
