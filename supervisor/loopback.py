"""HTTP clients to the models' llama-servers on loopback: one TLS context for all of them.

httpx builds a TLS context for every client it makes, loading the CA bundle, even when the client
only ever speaks plain HTTP: `httpx.AsyncClient()` took 25.3 ms on the 2-core test host, and 0.41 ms
with a context passed in (medians of 10, another job running; 28.1 and 0.9 ms once on the idle host). The gateway and the prober make one client per model
port, and a model gets a new port (or its client was closed before its stop) at each start, so
that cost fell on every cold start's first request and first probe. The context is built once,
on first use, and shared; nothing here speaks TLS, it is only what httpx asks for.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one TLS context the loopback clients share (built on first use)."""
    return ssl.create_default_context()
