"""Which of llama-server's endpoints the gateway forwards: allowlists, everything else 404.

llama-server serves more than inference: /slots/<id>?action=save|restore|erase, /props (POST
changes settings), /lora-adapters, /models/load, and with some flags /tools (runs tools) and
/cors-proxy (fetches any URL). The gateway used to pass any path, so a client (or a web page,
see guard.py) reached all of them with the model's key added. Routes as registered in
llama.cpp's tools/server/server.cpp.
"""

from __future__ import annotations

from supervisor.gateway import errors
from supervisor.gateway.errors import GatewayError

# POST /v1/<path>, routed by the JSON body's "model": OpenAI's and Anthropic's inference APIs.
INFERENCE = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/rerank", "/v1/reranking", "/v1/messages", "/v1/messages/count_tokens",
    "/v1/chat/completions/input_tokens", "/v1/responses/input_tokens",
})

# /upstream/<model>/<path>: reading a running model's state, and its pure text utilities.
UPSTREAM = frozenset({
    ("GET", "/health"), ("GET", "/v1/health"), ("GET", "/props"), ("GET", "/metrics"), ("GET", "/slots"),
    ("GET", "/models"), ("GET", "/v1/models"),
    ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/apply-template"),
})


def check_inference(path: str) -> GatewayError | None:
    if path in INFERENCE:
        return None
    return errors.endpoint_not_allowed("POST", path, sorted(INFERENCE))


def check_upstream(method: str, path: str) -> GatewayError | None:
    if (method, path) in UPSTREAM:
        return None
    allowed = [f"{m} /upstream/<model>{p}" for m, p in sorted(UPSTREAM)]
    return errors.endpoint_not_allowed(method, f"/upstream/<model>{path}", allowed)
