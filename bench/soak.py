"""`make soak DURATION=...` (not in CI): random faults against a real llama-supervisord with 2 models.

    python -m bench.soak --duration SECONDS [--seed N] [--out FILE]

Faults, one at a time at random intervals: SIGKILL of a model container, `docker pause` of one, a
manifest edit (ctx_size 512 <-> 640), kill -9 of the daemon and a fresh start on the same manifests
(its containers are adopted). Each recovery is timed from the fault to the moment every model answers
/health 200 (polled every 20 ms) on its wanted config. The daemon's file descriptors and RSS are
taken once it first has both models healthy and again at the end (after a daemon restart, the
new process's figures are the end figures). Every wait has a deadline; the run ends by itself
after --duration, finishing the recovery in progress.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from bench import live
from bench.stats import of

FAULTS = ("kill", "pause", "edit", "daemon-restart")
RECOVERY_TIMEOUT_S = 180.0


def recovered(fleet: live.Fleet, t0: float) -> float:
    """Monotonic time at which every model of the fleet answered /health 200 (waiting in turn)."""
    last = t0
    for m in fleet.models:
        last = max(last, live.until_healthy(fleet.port[m], timeout=RECOVERY_TIMEOUT_S))
    return last


def inject(fault: str, fleet: live.Fleet, rng: random.Random) -> tuple[str, float]:
    """Inject one fault; returns (what, the monotonic time of injection) once the fault took effect
    far enough that an old healthy answer cannot be mistaken for the recovery."""
    d = fleet.daemon
    assert d is not None
    model = rng.choice(fleet.models)
    if fault == "kill":
        cid = fleet.container_id(model)
        t0 = time.monotonic()
        fleet.client.api.kill(cid, signal="SIGKILL")
        live.wait_log(d, t0, 30, event="container exited", model=model)
        return f"kill {model}", t0
    if fault == "pause":
        cid = fleet.container_id(model)
        t0 = time.monotonic()
        fleet.client.api.pause(cid)
        live.wait_log(d, t0, 60, event="transition", model=model, **{"from": "RUNNING"})
        return f"pause {model}", t0
    if fault == "edit":
        new_ctx = 640 if fleet.ctx[model] == 512 else 512
        t0 = time.monotonic()
        fleet.write(model, ctx=new_ctx)
        live.wait_log(d, t0, 60, event="created", model=model)
        live.wait_for(lambda: str(new_ctx) in fleet.container(model).attrs["Args"],
                      30, "new config")
        return f"edit {model} ctx={new_ctx}", t0
    if fault == "daemon-restart":
        t0 = time.monotonic()
        d.kill9()
        fleet.start_daemon()
        return "kill -9 daemon + start", t0
    raise ValueError(fault)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak")
    ap.add_argument("--duration", type=float, required=True, help="seconds of faults (then it stops by itself)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--gap", type=float, nargs=2, default=(1.0, 8.0), metavar=("MIN", "MAX"),
                    help="random pause between a recovery and the next fault, seconds")
    ap.add_argument("--out", type=Path, default=None, help="also write the report (markdown) here")
    a = ap.parse_args(argv)
    live.env_ready()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    fleet = live.Fleet(live.demo_model(), 2, prefix="soak")
    times: dict[str, list[float]] = defaultdict(list)
    events: list[str] = []
    failures: list[str] = []
    t_start = time.monotonic()
    try:
        d = fleet.start_daemon()
        fleet.wait_all_healthy()
        time.sleep(1)
        assert d.proc is not None
        start_stats = live.proc_stats(d.proc.pid)
        deadline = time.monotonic() + a.duration
        max_faults = int(a.duration) + 1          # bounded even if every fault were instant
        for _ in range(max_faults):
            gap = rng.uniform(*a.gap)
            if time.monotonic() + gap >= deadline:
                break
            time.sleep(gap)
            fault = rng.choice(FAULTS)
            try:
                what, t0 = inject(fault, fleet, rng)
                secs = recovered(fleet, t0) - t0
            except (AssertionError, TimeoutError) as e:
                failures.append(f"{fault}: {e}")
                print(f"FAILED {fault}: {e}", flush=True)
                assert fleet.daemon is not None
                print(fleet.daemon.dump(), flush=True)
                break
            times[fault].append(secs)
            events.append(f"{time.monotonic() - t_start:7.1f}s  {what:<40} recovered in {secs:.2f} s")
            print(events[-1], flush=True)
        time.sleep(1)
        assert fleet.daemon is not None and fleet.daemon.proc is not None
        end_stats = live.proc_stats(fleet.daemon.proc.pid)
    finally:
        fleet.close()
    elapsed = time.monotonic() - t_start
    report = render(times, events, failures, start_stats, end_stats, seed=seed, duration=a.duration,
                    elapsed=elapsed, gap=tuple(a.gap))
    print(report)
    if a.out:
        a.out.write_text(report)
    return 1 if failures else 0


def render(times: dict[str, list[float]], events: list[str], failures: list[str], start: live.ProcStats,
           end: live.ProcStats, *, seed: int, duration: float, elapsed: float, gap: tuple[float, ...]) -> str:
    out = [f"`python -m bench.soak --duration {duration:g} --seed {seed}`: 2 models, faults {', '.join(FAULTS)} "
           f"with {gap[0]:g}-{gap[1]:g} s between a recovery and the next fault; {elapsed:.0f} s in all.", "",
           "| fault | n | median | p99 | max |", "|---|---|---|---|---|"]
    every = [v for vs in times.values() for v in vs]
    for name in (*FAULTS, "all"):
        vs = every if name == "all" else times.get(name, [])
        if vs:
            s = of(vs)
            out.append(f"| {name} | {s.n} | {s.median:.2f} s | {s.pct(99):.2f} s | {max(vs):.2f} s |")
        else:
            out.append(f"| {name} | 0 | - | - | - |")
    out += ["", "Recovery = from the fault to every model answering /health 200 on its wanted config.", "",
            "| daemon | start | end |", "|---|---|---|",
            f"| file descriptors | {start.fds} | {end.fds} |",
            f"| RSS | {start.rss_bytes / 2**20:.1f} MiB | {end.rss_bytes / 2**20:.1f} MiB |",
            f"| threads | {start.threads} | {end.threads} |", ""]
    if any(times.get("daemon-restart", [])):
        out += ["(A daemon restart replaces the process: the end figures are then those of the last daemon.)", ""]
    out += [f"Failures: {len(failures)}" + ("" if not failures else ": " + "; ".join(failures)), "",
            "Every recovery:", "", "```", *events, "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
