"""The gateway's errors, answered in OpenAI's shape: {"error": {"message", "type", "code"}}."""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.responses import Response


class GatewayError(Exception):
    """A request the gateway answers itself, with an HTTP status and an OpenAI error body."""

    def __init__(self, status: int, message: str, *, type: str, code: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.type, "code": self.code}}).encode()

    def response(self) -> Response:
        return Response(self.body(), status_code=self.status, headers=self.headers, media_type="application/json")

    def sse_event(self) -> bytes:
        """The same error as a server-sent event, for a stream cut after it began."""
        return b"data: " + self.body() + b"\n\n"


def not_found(model: str, known: list[str]) -> GatewayError:
    listed = ", ".join(known) or "none"
    return GatewayError(404, f"model '{model}' does not exist; the models here are: {listed}",
                        type="invalid_request_error", code="model_not_found")


def bad_request(message: str) -> GatewayError:
    return GatewayError(400, message, type="invalid_request_error", code="invalid_request")


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"request body over {limit} bytes (fix: send less, or raise --gateway-max-body)",
                        type="invalid_request_error", code="request_too_large")


def unauthorized() -> GatewayError:
    return GatewayError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                        type="invalid_request_error", code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"})


def model_key_required(model: str, *, gateway_keys: bool) -> GatewayError:
    fix = ("send the model's own key or a gateway key" if gateway_keys else
           "send the model's own key, or give the daemon --gateway-api-keys-file and send one of those keys")
    return GatewayError(401, f"model '{model}' has its own API key: the gateway does not use it for you"
                             f" (fix: {fix} as 'Authorization: Bearer <key>')",
                        type="invalid_request_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def misdirected(host: str) -> GatewayError:
    return GatewayError(421, f"Host {host!r} is not a name of this gateway (a DNS-rebinding page sends its own"
                             " name; fix: use 127.0.0.1 or localhost, or name the host with --gateway-allowed-hosts)",
                        type="invalid_request_error", code="misdirected_request")


def cross_site(origin: str) -> GatewayError:
    return GatewayError(403, f"cross-site request refused (Origin {origin!r}): web pages other than the gateway's"
                             " own may not use it (fix: call it from a program, which sends no Origin)",
                        type="invalid_request_error", code="cross_site_request")


def unsupported_media(content_type: str) -> GatewayError:
    return GatewayError(415, f"Content-Type {content_type or '(none)'!r}: the gateway takes JSON only"
                             " (fix: send 'Content-Type: application/json')",
                        type="invalid_request_error", code="unsupported_media_type")


def endpoint_not_allowed(method: str, path: str, allowed: list[str]) -> GatewayError:
    return GatewayError(404, f"{method} {path} is not forwarded by the gateway; it forwards: {', '.join(allowed)}",
                        type="invalid_request_error", code="endpoint_not_allowed")


def starting(waited_s: float) -> GatewayError:
    return GatewayError(503, f"the daemon has not applied its manifests yet after {waited_s:.0f}s; retry shortly",
                        type="server_error", code="starting", headers={"Retry-After": "1"})


def send_failed(model: str, detail: str) -> GatewayError:
    return GatewayError(502, f"the gateway could not send the request to model '{model}' ({detail})"
                             " (fix: see the daemon's log; a key in the model's api_key_file must be printable text)",
                        type="server_error", code="upstream_error")


def queue_full(model: str, limit: int, retry_after_s: int) -> GatewayError:
    return GatewayError(429, f"model '{model}' already has {limit} requests waiting for it to be ready"
                        f" (its max_queue); retry after {retry_after_s}s",
                        type="rate_limit_error", code="queue_full", headers={"Retry-After": str(retry_after_s)})


def unavailable(message: str, code: str) -> GatewayError:
    return GatewayError(503, message, type="server_error", code=code)


def start_timeout(model: str, waited_s: float) -> GatewayError:
    return GatewayError(504, f"model '{model}' was not ready after {waited_s:.0f}s",
                        type="server_error", code="start_timeout")


def upstream_failed(model: str, detail: str) -> GatewayError:
    return GatewayError(502, f"model '{model}' failed during the request ({detail}); it is being restarted",
                        type="server_error", code="upstream_error")


def not_object(detail: str) -> GatewayError:
    return bad_request(f"the body is not JSON ({detail}; fix: send a JSON object with \"model\")")


def too_deep(detail: str) -> GatewayError:
    return GatewayError(400, f"the body's {detail} (fix: flatten the request; no OpenAI request comes near)",
                        type="invalid_request_error", code="too_deeply_nested")


def body_timeout(what: str) -> GatewayError:
    """408, and the connection is closed: the client stopped sending its body."""
    return GatewayError(408, f"the request body did not arrive in time ({what}; fix: send the whole body"
                        " promptly after the headers)", type="invalid_request_error", code="request_timeout",
                        headers={"Connection": "close"})


def body_incomplete() -> GatewayError:
    """The client went away before its body was complete (nobody reads this answer)."""
    return GatewayError(400, "the client closed the connection before the request body was complete",
                        type="invalid_request_error", code="client_disconnected", headers={"Connection": "close"})


def busy(message: str, code: str, retry_after_s: int) -> GatewayError:
    """503 + Retry-After: the gateway's own room (uploads at once, bytes of bodies in flight) is full.
    The connection is closed after it: reading the rest of a refused 16 MiB body only to drop it cost
    the loop more than the refusal saved (100 refused uploads: 1.5 GB to drain)."""
    return GatewayError(503, f"{message}; retry after {retry_after_s}s", type="server_error", code=code,
                        headers={"Retry-After": str(retry_after_s), "Connection": "close"})
