"""The chaos workload of issue 21: streaming clients through the gateway while models and the daemon are killed.

    python -m bench.run --only chaos --out docs/BENCHMARKS.md [--chaos-duration 150]

One real llama-supervisord under `systemd-socket-activate` (it holds the gateway's and the control
socket's listening sockets, as llama-supervisor-*.socket do under systemd; the harness's loop starts
the daemon again when it dies), two models (parallel 2, reached through the gateway only), and
4 streaming clients (2 a model), each request on a new connection, for the whole duration. Meanwhile:

    every 20 s      a model container is SIGKILLed (the models in turn)
    at 40 %         one manifest edit (ctx_size 512 -> 1024): the model is recreated
    at 70 %         the daemon is kill -9ed; the next one adopts the models, under the same sockets

Each request ends as one of: answered (200, the stream complete), refused (the connection was refused),
cut (a stream that began and ended in an error event or a broken connection), failed (anything else:
a non-200 answer, a connection broken before any byte). A request not answered is attributed to a
SIGKILL of its model or to the daemon's kill -9 when it was in flight at that moment; the rest is
"failed outside kills in flight", whose target is 0. Then the floor: the same kill -9 and restart of a
daemon that binds the port itself (no socket activation), with one client looping on new connections.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench import live

if TYPE_CHECKING:
    from bench.run import Report

KILL_EVERY_S = 20.0
MAX_TOKENS = 24
CLIENTS = 4


@dataclass(frozen=True)
class Outcome:
    model: str
    start: float
    end: float
    kind: str           # answered | refused | cut | failed
    detail: str = ""


def stream_once(gateway: str, model: str) -> Outcome:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": MAX_TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True}
    t0 = time.monotonic()
    began = False
    try:
        # no keep-alive: every request opens a connection, so a refused one shows
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=120, trust_env=False) as c:
            with c.stream("POST", f"{gateway}/v1/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    return Outcome(model, t0, time.monotonic(), "failed", f"{r.status_code} {r.text[:160]}")
                done = error = False
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    began = True
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                    elif '"error"' in data:
                        error = True
                        detail = data[:160]
                if done and not error:
                    return Outcome(model, t0, time.monotonic(), "answered")
                return Outcome(model, t0, time.monotonic(), "cut", detail if error else "no [DONE]")
    except httpx.ConnectError as e:
        return Outcome(model, t0, time.monotonic(), "refused", str(e)[:160])
    except httpx.HTTPError as e:
        return Outcome(model, t0, time.monotonic(), "cut" if began else "failed", f"{type(e).__name__}: {e}"[:160])


def write_manifest(directory: Path, demo: Path, model: str, ctx: int) -> None:
    tmp = directory / f".{model}.tmp"
    tmp.write_text(live.model_yaml(model, None, demo, live.DEMO_SHA256, ctx=ctx, fast_probes=False,
                                   memory="512m", parallel=2))
    tmp.rename(directory / f"{model}.yaml")


def bench_chaos(r: Report, *, quick: bool, duration_s: float = 150.0) -> None:
    import tempfile
    import uuid

    import docker

    demo = live.demo_model()
    tag = uuid.uuid4().hex[:6]
    directory = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    models = [f"bench{tag}-a", f"bench{tag}-b"]
    for m in models:
        write_manifest(directory, demo, m, 512)
    client = docker.from_env(timeout=60)
    d = live.Daemon(directory, socket_activated=True,
                    extra=["--resync-interval", "30", "--stop-timeout", "10"]).start()
    outcomes: list[Outcome] = []
    # (from, to, model) of each container SIGKILL: from before the kill call to its return (it returns once the
    # container is dead, ~0.15 s; a stream cut in that window was cut by the kill)
    kills: list[tuple[float, float, str]] = []
    try:
        d.wait_log(lambda rec: str(rec.get("event", "")).startswith("Listening on 127.0.0.1"), 10, "the sockets")
        for m in models:      # the first request starts the daemon (socket activation), then each model
            live.wait_for(lambda m=m: stream_once(d.gateway, m).kind == "answered", 3 * live.LOAD_TIMEOUT_S,
                          f"{m} answering", step=0.5)
        before = live.proc_stats(d.daemon_pid())
        stop = threading.Event()

        def loop(model: str) -> None:
            while not stop.is_set():
                outcomes.append(stream_once(d.gateway, model))

        threads = [threading.Thread(target=loop, args=(models[i % 2],), daemon=True) for i in range(CLIENTS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        edit_at, daemon_kill_at = t0 + 0.4 * duration_s, t0 + 0.7 * duration_s
        next_kill, turn = t0 + KILL_EVERY_S, 0
        edited: float | None = None
        daemon_killed: tuple[float, float] | None = None
        restart: tuple[float, int, int] | None = None
        while (now := time.monotonic()) < t0 + duration_s:
            if now >= next_kill:
                m = models[turn % 2]
                turn += 1
                next_kill += KILL_EVERY_S
                try:
                    victim = live.container(client, m, live.instance_for(directory))
                    before_kill = time.monotonic()
                    victim.kill(signal="SIGKILL")
                    kills.append((before_kill, time.monotonic(), m))
                except docker.errors.APIError as e:       # between a recreate's remove and create: none to kill
                    r.notes.append(f"SIGKILL of {m} at {now - t0:.0f} s skipped: {str(e)[:120]}")
            if edited is None and now >= edit_at:
                write_manifest(directory, demo, models[0], 1024)
                edited = time.monotonic()
            if daemon_killed is None and now >= daemon_kill_at:
                old = d.daemon_pid()
                before_kill = time.monotonic()
                d.kill9_daemon()
                daemon_killed = (before_kill, time.monotonic())
                new = d.daemon_pid(timeout=120)
                restart = (time.monotonic() - daemon_killed[1], old, new)
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(150)
        time.sleep(2)
        after = live.proc_stats(d.daemon_pid())
        report(r, outcomes, kills, edited=edited, daemon_killed=daemon_killed, restart=restart, t0=t0,
               duration_s=duration_s, before=before, after=after)
        d.terminate(60)
        floor(r, directory)
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill9()
        live.remove_models(client, models)
        client.close()


def report(r: Report, outcomes: list[Outcome], kills: list[tuple[float, float, str]], *, edited: float | None,
           daemon_killed: tuple[float, float] | None, restart: tuple[float, int, int] | None, t0: float, duration_s: float,
           before: live.ProcStats, after: live.ProcStats) -> None:
    def in_flight(o: Outcome, window: tuple[float, float]) -> bool:
        return o.start <= window[1] and o.end >= window[0]

    kinds = Counter(o.kind for o in outcomes)
    not_answered = [o for o in outcomes if o.kind != "answered"]
    at_sigkill = [o for o in not_answered if any(in_flight(o, (lo, hi)) and o.model == m for lo, hi, m in kills)]
    at_daemon = [o for o in not_answered if o not in at_sigkill and daemon_killed is not None
                 and in_flight(o, daemon_killed)]
    rest = [o for o in not_answered if o not in at_sigkill and o not in at_daemon]
    refused = [o for o in outcomes if o.kind == "refused"]
    n = len(outcomes)
    r.value_row(f"requests over {duration_s:.0f} s ({CLIENTS} streaming clients, 2 models, parallel 2, "
                f"{MAX_TOKENS} tokens each, a new connection each)", f"{n}")
    r.value_row("  answered (200, stream complete)", f"{kinds['answered']}")
    r.value_row(f"  cut in flight at a model SIGKILL ({len(kills)} SIGKILLs, every {KILL_EVERY_S:.0f} s)",
                f"{len(at_sigkill)}")
    r.value_row("  cut in flight at the daemon's kill -9", f"{len(at_daemon)}")
    r.value_row("  failed outside those", f"{len(rest)}", target="0", met=not rest)
    r.value_row("connections refused (all of the run; the daemon restart inherits the sockets)",
                f"{len(refused)}", target="0", met=not refused)
    if restart is not None:
        r.value_row("daemon kill -9 -> next daemon answering on the control socket", f"{restart[0]:.2f} s")
    if edited is not None:
        after_edit = [o for o in outcomes if o.start >= edited and o.model.endswith("-a")]
        bad = [o for o in after_edit if o.kind != "answered"
               and not any(in_flight(o, (lo, hi)) for lo, hi, m in kills if m == o.model)
               and not (daemon_killed is not None and in_flight(o, daemon_killed))]
        r.value_row("  of those sent to the edited model after the edit began (outside kills in flight): not answered",
                    f"{len(bad)} of {len(after_edit)}", target="0", met=not bad)
        if bad:
            r.notes.append("not answered after the edit: " + "; ".join(
                f"+{o.start - edited:.1f} s {o.kind} {o.detail}" for o in bad[:6]))
    r.value_row("daemon RSS before -> after (the first daemon, then the one after the kill -9)",
                f"{before.rss_bytes / 2**20:.1f} -> {after.rss_bytes / 2**20:.1f} MiB")
    r.value_row("daemon fds before -> after", f"{before.fds} -> {after.fds}")
    if rest:
        r.notes.append("failed outside kills in flight: " + "; ".join(
            f"+{o.start - t0:.1f} s {o.model[-1]} {o.kind} {o.detail}" for o in rest[:8]))
    if at_daemon:
        r.notes.append("at the daemon's kill -9: " + ", ".join(sorted(Counter(o.detail.split(':')[0]
                                                                              for o in at_daemon))))


def floor(r: Report, directory: Path) -> None:
    """The same kill -9 and restart of a daemon that binds the port itself: what `make run` gets."""
    d = live.Daemon(directory, extra=["--resync-interval", "30", "--stop-timeout", "10"]).start()
    port = d.gateway_port
    results: list[tuple[float, str]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            t = time.monotonic()
            try:
                with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30,
                                  trust_env=False) as c:
                    c.get(f"http://127.0.0.1:{port}/v1/models")
                results.append((t, "ok"))
            except httpx.ConnectError:
                results.append((t, "refused"))
                time.sleep(0.01)
            except httpx.HTTPError:
                results.append((t, "cut"))

    d2: live.Daemon | None = None
    try:
        live.wait_for(lambda: _answers(port), live.LOAD_TIMEOUT_S, "the plain daemon's gateway", step=0.2)
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        time.sleep(1)
        d.kill9()
        killed = time.monotonic()
        d2 = live.Daemon(directory, extra=["--resync-interval", "30", "--stop-timeout", "10",
                                            "--gateway-listen", f"127.0.0.1:{port}"]).start()
        live.wait_for(lambda: any(t > killed and o == "ok" for t, o in results), 60, "the restarted daemon answering")
        stop.set()
        thread.join(40)
        refused = [t for t, o in results if o == "refused"]
        span = (max(refused) - min(refused)) if refused else 0.0
        r.value_row("floor: the same kill -9 and restart without socket activation (`make run`): connections refused",
                    f"{len(refused)} over {span:.2f} s")
        d2.terminate(60)
    finally:
        stop.set()
        for x in (d, d2):
            if x is not None and x.proc is not None and x.proc.poll() is None:
                x.kill9()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False

