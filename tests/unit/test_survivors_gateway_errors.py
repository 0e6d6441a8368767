"""Mutants of gateway/errors.py that survived `make mutate` (docs/TESTING.md): each error the gateway
answers itself, whole: status, OpenAI type and code, headers (names compared without case, as HTTP does)
and the message a client or operator reads, with its fix."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from supervisor.gateway import errors
from supervisor.gateway.errors import GatewayError

CASES: list[tuple[Callable[[], GatewayError], int, str, str, dict[str, str], str]] = [
    (lambda: errors.unauthorized(), 401, 'invalid_request_error', 'invalid_api_key', {'www-authenticate': 'Bearer'},
     "missing or wrong API key (send 'Authorization: Bearer <key>')"),
    (lambda: errors.model_key_required('m', gateway_keys=True), 401, 'invalid_request_error', 'invalid_api_key', {'www-authenticate': 'Bearer'},
     "model 'm' has its own API key: the gateway does not use it for you (fix: send the model's"
     " own key or a gateway key as 'Authorization: Bearer <key>')"),
    (lambda: errors.model_key_required('m', gateway_keys=False), 401, 'invalid_request_error', 'invalid_api_key', {'www-authenticate': 'Bearer'},
     "model 'm' has its own API key: the gateway does not use it for you (fix: send the model's"
     ' own key, or give the daemon --gateway-api-keys-file and send one of those keys as'
     " 'Authorization: Bearer <key>')"),
    (lambda: errors.misdirected('evil.example:8080'), 421, 'invalid_request_error', 'misdirected_request', {},
     "Host 'evil.example:8080' is not a name of this gateway (a DNS-rebinding page sends its"
     ' own name; fix: use 127.0.0.1 or localhost, or name the host with --gateway-allowed-hosts)'),
    (lambda: errors.cross_site('http://evil.example'), 403, 'invalid_request_error', 'cross_site_request', {},
     "cross-site request refused (Origin 'http://evil.example'): web pages other than the"
     " gateway's own may not use it (fix: call it from a program, which sends no Origin)"),
    (lambda: errors.unsupported_media(''), 415, 'invalid_request_error', 'unsupported_media_type', {},
     "Content-Type '(none)': the gateway takes JSON only (fix: send 'Content-Type:"
     " application/json')"),
    (lambda: errors.unsupported_media('text/plain'), 415, 'invalid_request_error', 'unsupported_media_type', {},
     "Content-Type 'text/plain': the gateway takes JSON only (fix: send 'Content-Type:"
     " application/json')"),
    (lambda: errors.endpoint_not_allowed('POST', '/v1/files', ['/v1/chat/completions', '/v1/embeddings']), 404, 'invalid_request_error', 'endpoint_not_allowed', {},
     'POST /v1/files is not forwarded by the gateway; it forwards: /v1/chat/completions,'
     ' /v1/embeddings'),
    (lambda: errors.starting(61.4), 503, 'server_error', 'starting', {'retry-after': '1'},
     'the daemon has not applied its manifests yet after 61s; retry shortly'),
    (lambda: errors.send_failed('m', 'connection refused'), 502, 'server_error', 'upstream_error', {},
     "the gateway could not send the request to model 'm' (connection refused) (fix: see the"
     " daemon's log; a key in the model's api_key_file must be printable text)"),
    (lambda: errors.queue_full('m', 4, 7), 429, 'rate_limit_error', 'queue_full', {'retry-after': '7'},
     "model 'm' already has 4 requests waiting for it to be ready (its max_queue); retry after"
     ' 7s'),
    (lambda: errors.too_deep('nesting is over 64 levels'), 400, 'invalid_request_error', 'too_deeply_nested', {},
     "the body's nesting is over 64 levels (fix: flatten the request; no OpenAI request comes"
     ' near)'),
    (lambda: errors.body_timeout('10 s without a byte'), 408, 'invalid_request_error', 'request_timeout', {'connection': 'close'},
     'the request body did not arrive in time (10 s without a byte; fix: send the whole body'
     ' promptly after the headers)'),
    (lambda: errors.busy('full', 'uploads_full', 2), 503, 'server_error', 'uploads_full', {'retry-after': '2', 'connection': 'close'},
     'full; retry after 2s'),
]


@pytest.mark.parametrize(("make", "status", "type_", "code", "headers", "message"), CASES)
def test_each_error_in_full(make: Callable[[], GatewayError], status: int, type_: str, code: str,
                            headers: dict[str, str], message: str) -> None:
    e = make()
    assert (e.status, e.type, e.code, e.message) == (status, type_, code, message)
    assert {k.lower(): v for k, v in e.headers.items()} == headers
    assert json.loads(e.body()) == {"error": {"message": message, "type": type_, "code": code}}
    assert e.response().status_code == status
