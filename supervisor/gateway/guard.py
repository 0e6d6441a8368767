"""The gateway's browser defences, as an ASGI middleware in front of every handler.

A web page in the operator's browser can reach 127.0.0.1: by DNS rebinding (its own name
resolved to 127.0.0.1, so the browser lets it read the answers) and by sending requests
cross-site (CSRF: the browser sends them, the page cannot read the answers, but a POST
still runs). So, for every request:

- Host must name this gateway: 127.0.0.1, localhost, [::1], the listen address, or a name
  given with --gateway-allowed-hosts (any port). Anything else is 421: a rebinding page's
  requests carry its own name.
- An Origin, if sent, must be the gateway's own (http://<that Host>); `Origin: null` and
  every other origin are 403, and so is `Sec-Fetch-Site: cross-site` or `same-site` (another
  port on localhost is another site to us). Programs (curl, the SDKs) send neither.
- Every request with a body (any method but GET, HEAD, OPTIONS) must say
  `Content-Type: application/json` (415 otherwise): a page can send text/plain or a form
  cross-site without asking the browser's CORS preflight, but not JSON.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from supervisor.gateway import errors
from supervisor.gateway.errors import GatewayError

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


def _unbracket(host: str) -> str:
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def allowed_hosts(listen_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host names the gateway answers: loopback, the listen address unless it is a wildcard
    (0.0.0.0, ::), and the operator's names."""
    names = set(LOOPBACK_NAMES)
    host = _unbracket(listen_host)
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if host and not wildcard:
        names.add(host)
    names.update(h for n in extra if (h := _unbracket(n)))
    return frozenset(names)


def split_host(value: str) -> tuple[str, int | None] | None:
    """'localhost:8080' -> ('localhost', 8080); '[::1]' -> ('::1', None); None when malformed."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep or ":" in host:           # no port, or a bare IPv6 address (not a valid Host)
            host, port = value, None
        else:
            port = port_s
    if port is not None and not (port.isdigit() and len(port) <= 5):
        return None
    if not host:
        return None
    return _unbracket(host), None if port is None else int(port)


def check(method: str, headers: dict[str, str], hosts: frozenset[str]) -> GatewayError | None:
    """None when the request may go on; otherwise the error to answer it with."""
    host_header = headers.get("host", "")
    parsed = split_host(host_header)
    if parsed is None or parsed[0] not in hosts:
        return errors.misdirected(host_header)
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, parsed):
        return errors.cross_site(origin)
    site = headers.get("sec-fetch-site", "").strip().lower()
    if site in ("cross-site", "same-site"):
        return errors.cross_site(origin or f"Sec-Fetch-Site: {site}")
    if method not in _BODYLESS:
        content_type = headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            return errors.unsupported_media(content_type)
    return None


def _same_origin(origin: str, host: tuple[str, int | None]) -> bool:
    """Is `origin` (scheme://host[:port]) the gateway's own, as the client named it in Host?

    Browsers leave a scheme's default port out of both Host and Origin, so the ports compare as
    written; https is accepted for a TLS proxy in front that keeps the Host."""
    try:
        u = urlsplit(origin.strip())
        port = u.port
    except ValueError:
        return False
    if u.scheme not in ("http", "https") or u.hostname is None or u.path or u.query or u.username:
        return False
    return (_unbracket(u.hostname), port) == host


class Guard:
    """ASGI middleware: `check` every HTTP request before `app` sees it."""

    def __init__(self, app: Any, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    # pragma: no mutate block (make mutate: uvicorn calls the app with no arguments to tell a factory;
    # mutmut's wrapper would answer with a coroutine, and the gateway's served tests could not run)
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers: dict[str, str] = {}
            for k, v in scope["headers"]:          # the first of a repeated header, as Starlette reads it
                headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
            refused = check(scope["method"], headers, self.hosts)
            if refused is not None:
                await refused.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
