"""The web console's figures (issue 18), in-process over a hand-written daemon of 100 models (no engine):

- first paint: GET /ui/ (the server-rendered models page, 100 models) on loopback, beside GET /health
  on the same server (the floor);
- the event stream at rest: CPU of the serving process over a window with 10 models pages open and
  nothing changing, beside the same window with none open;
- memory: the RSS of a child serving the gateway with the console and 10 pages open (the clients in
  another process), less the RSS of a child serving the gateway alone; both children import what the
  daemon imports anyway (the image lock's module, core.text).

`python -m bench.run --only console` writes its section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import httpx
import psutil

from bench.stats import of, timed

MODELS = 100
PAGES = 10


class HundredModels:
    """status/submit/logs/runtime of a daemon with MODELS models that do not change (at rest)."""

    def __init__(self) -> None:
        from supervisor.core.status import ModelStatus

        self.models = [ModelStatus(name=f"model-{i:03d}", state="RUNNING" if i % 3 else "STOPPED", port=9000 + i,
                                   container_id=f"c{i}", image_id=None, uptime_s=None, restarts=i % 4,
                                   last_exit_code=None, reason="healthy", aliases=(f"alias-{i}",),
                                   memory_counted=300 << 20, memory_basis="limit") for i in range(MODELS)]

    def status(self, names: tuple[str, ...] = ()) -> list[Any]:
        return [m for m in self.models if not names or m.name in names]

    def submit(self, command: Any) -> Future[Any]:
        raise NotImplementedError

    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        return iter(())

    def runtime(self) -> str:
        return "docker"


class Backend:
    def __init__(self) -> None:
        from supervisor.core.demand import Demand

        self.demand = Demand(time.monotonic)

    def routes(self) -> dict[str, Any]:
        return {}

    def ensure(self, model: str) -> Future[Any]:
        raise NotImplementedError

    def published(self) -> bool:
        return True


def serve(console: bool) -> tuple[str, Any, Any]:
    """The gateway (with the console or not) on a loopback port, on a thread; (base URL, server, console)."""
    import uvicorn

    from supervisor.core.activity import Activity
    from supervisor.gateway.app import GatewaySettings, create_app

    activity = Activity()
    mounts: list[Any] = []
    c = None
    if console:
        from starlette.routing import Mount

        from supervisor.console.app import Console, HostFacts
        from supervisor.console.auth import Authority, new_token
        from supervisor.console.views import Budgets

        c = Console(HundredModels(), activity, Authority(new_token()),
                    HostFacts(cores=os.cpu_count() or 1, memory_bytes=psutil.virtual_memory().total,
                              budgets=Budgets(64 << 30, None)))
        mounts = [Mount("/ui", app=c.app)]
    app = create_app(Backend(), GatewaySettings(), activity=activity, mounts=mounts)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)     # as GatewayServer: no 40 ms delayed ACKs
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", loop="asyncio",
                                           http="h11"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    if c is not None:
        c.start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, c


def open_pages(base: str, n: int) -> list[Any]:
    """n models pages' event streams, read on threads until closed."""
    streams = []
    for _ in range(n):
        client = httpx.Client(timeout=None)
        response = client.send(client.build_request("GET", f"{base}/ui/events?page=models"), stream=True)
        assert response.status_code == 200, response.status_code
        threading.Thread(target=_drain, args=(response,), daemon=True).start()
        streams.append((client, response))
    return streams


def _drain(response: Any) -> None:
    try:
        for _ in response.iter_raw():
            pass
    except httpx.HTTPError:
        pass                                # closed by the benchmark


def child(mode: str) -> None:
    """`python -m bench.console child plain|console`: serve and print the base URL; the parent opens the
    pages (its clients are not in this process) and reads this process's RSS."""
    # what the daemon has imported anyway, console or not (the runtimes use the lock and core.text)
    import supervisor.artifacts.lock  # noqa: F401
    import supervisor.core.text  # noqa: F401

    base, _, _ = serve(mode == "console")
    print(json.dumps({"base": base}), flush=True)
    time.sleep(600)


def served_rss(mode: str) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "bench.console", "child", mode], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout is not None
        base = json.loads(proc.stdout.readline())["base"]
        pages = []
        with httpx.Client() as c:
            c.get(base + "/health")
            if mode == "console":
                for path in ("/ui/", "/ui/activity", "/ui/logs", "/ui/host"):
                    c.get(base + path)
                pages = open_pages(base, PAGES)
        time.sleep(3)
        rss = int(psutil.Process(proc.pid).memory_info().rss)
        for client, response in pages:
            response.close()
            client.close()
        return rss
    finally:
        proc.kill()
        proc.wait(10)


def bench_console(r: Any, *, quick: bool) -> None:
    base, server, console = serve(True)
    n = 20 if quick else 100
    with httpx.Client(base_url=base) as c:
        page = c.get("/ui/")
        weight = len(page.content) + sum(len(c.get(f"/ui/static/{f}").content) for f in ("console.css", "console.js"))
        paint = timed(lambda: c.get("/ui/").raise_for_status(), n)
        floor = timed(lambda: c.get("/health").raise_for_status(), n)
    r.time_row(f"first paint of the models page, {MODELS} models (GET /ui/)", paint, target="<= 100 ms",
               limit=0.100, floor=floor.median, unit="ms", scale=1000, digits=1)
    r.time_row("floor: GET /health on the same server", floor, unit="ms", scale=1000, digits=2)
    r.value_row(f"page weight, {MODELS} models (HTML + CSS + script, uncompressed)", f"{weight / 1024:.1f} KiB",
                target="<= 150 kB", met=weight <= 150_000)
    window = 10.0 if quick else 30.0
    me = psutil.Process()

    def cpu_share() -> float:
        t0, c0 = time.monotonic(), sum(me.cpu_times()[:2])
        time.sleep(window)
        return (sum(me.cpu_times()[:2]) - c0) / (time.monotonic() - t0)

    rest = cpu_share()
    pages = open_pages(base, PAGES)
    time.sleep(2)
    busy = cpu_share()
    r.value_row(f"CPU at rest, {PAGES} models pages open ({window:.0f} s window, whole process)",
                f"{busy * 100:.3f} % of a core", target="-")
    r.value_row("floor: the same with no page open", f"{rest * 100:.3f} % of a core")
    r.value_row(f"the event streams' cost at rest ({PAGES} pages, the difference)",
                f"{(busy - rest) * 100:.3f} % of a core", target="<= 0.1 %", met=busy - rest <= 0.001)
    for client, response in pages:
        try:
            response.close()
        except httpx.HTTPError:
            pass
        client.close()
    server.should_exit = True
    console.close()
    rss = {mode: served_rss(mode) for mode in ("plain", "console")}
    extra = rss["console"] - rss["plain"]
    r.value_row(f"console RSS with {PAGES} pages open (child with console - child without)",
                f"{extra / (1 << 20):.2f} MiB", target="<= 3 MiB", met=extra <= 3 << 20)
    r.how.append(("console", f"in-process gateway + console over a hand-written daemon of {MODELS} unchanging models "
                             f"(bench/console.py), loopback, keep-alive client; RSS in two child processes"))


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(sys.argv[2])
