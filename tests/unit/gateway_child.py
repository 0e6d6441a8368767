"""A gateway in a process of its own, over a fake backend and a fake model, for what needs its own fd limit
and its own RSS (tests/unit/test_gateway_connections.py, bench/gateway_flood.py).

    python -m tests.unit.gateway_child [--nofile N]

Prints the gateway's port on its first line, then serves until its stdin closes. The one model, "m",
is RUNNING on a tiny HTTP server in the same process that answers every POST with a fixed completion.
"""

from __future__ import annotations

import argparse
import http.server
import json
import resource
import sys
import threading
import time
from concurrent.futures import Future

import structlog

from supervisor.core.commands import Readiness
from supervisor.core.lifecycle import State
from supervisor.core.routing import Route, route_table
from supervisor.core.demand import Demand
from supervisor.gateway.app import create_app
from supervisor.gateway.server import GatewayServer

COMPLETION = {"object": "text_completion", "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}


class Backend:
    def __init__(self, model_port: int) -> None:
        self.demand = Demand(time.monotonic)
        self.table = route_table((Route("m", State.RUNNING, "127.0.0.1", model_port, start_timeout_s=5),))

    def routes(self) -> dict[str, Route]:
        return self.table

    def ensure(self, model: str) -> Future[Readiness]:
        return Future()          # never answered: "m" is always RUNNING

    def published(self) -> bool:
        return True              # the routes above are the first and only ones


class _Model(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = json.dumps(COMPLETION).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nofile", type=int, default=None, help="RLIMIT_NOFILE (soft and hard) for this process")
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))   # stdout: the port only
    if args.nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    model = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    server = GatewayServer(create_app(Backend(model.server_address[1])), "127.0.0.1:0")
    server.start()
    print(server.port, flush=True)     # (connections made before the loop runs wait in the listen queue)
    sys.stdin.read()
    server.close()
    model.shutdown()


if __name__ == "__main__":
    main()
