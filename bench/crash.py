"""`python -m bench.run --only crash`: a crash after running healthy, beside its in-place floor (issue 17 §4).

A real llama-supervisord supervises one always-on demo model (default health settings). A crash after the
model ran healthy longer than `stable_after` restarts it at once, in place: `docker start` of the same
container. Its floor is therefore `docker start` of a stopped container, not `docker run`. Each round runs
these in a rotating order, every figure from one 5 ms /health poll of this process:

- floor (API): a bare container with the daemon's own spec (hardening, mounts, log options, its bridge
  network: bench/live.py docker_run_argv) is SIGKILLed. After `exited`, `APIClient.start` (the call the
  daemon makes) is timed to the first /health 200.
- floor (CLI): the same with the `docker start` command, for reference.
- ours: `APIClient.kill(id, "SIGKILL")` of the model's container, timed from the kill call's return to the
  first /health 200 on the model's port. The kill returns once the process is gone, so that is the
  earliest moment any supervisor could act.

An always-on model's container is a plain one whatever `--standby` says (it holds only stopped on-demand
models: supervisor/runtime/docker/standby.py); until 2026-11-30 a second daemon run with `--standby` had a
gated one here, and its crash restart gained nothing (no gate waits in a killed container).

The parts of ours come from the daemon's JSON log (receipt times): kill returned -> `start in place`
(events, the loop, the checks before a start), `start in place` -> /health 200 (Docker and the load), and
/health 200 -> `transition ... RUNNING` (the starting probe's schedule, the KV restore, one loop pass).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from bench import live
from bench.stats import of

if TYPE_CHECKING:
    from bench.run import Report      # run as `-m bench.run`, that module is __main__: never isinstance against it

POLL_S = 0.005        # one poll step for the floor and ours alike
SETTLE_S = 0.3        # after a floor's `exited`, before its start: nothing of the kill left in flight


class Ours:
    """The daemon's figures."""

    def __init__(self, demo: Path) -> None:
        self.fleet = live.Fleet(demo, 1)    # named bench*: the crowd watch knows it as this benchmark's own
        self.ok: list[float] = []
        self.from_before: list[float] = []
        self.to_start: list[float] = []
        self.start_to_ok: list[float] = []
        self.ok_to_running: list[float] = []
        self.cpu: list[float] = []

    def start(self) -> None:
        self.daemon = self.fleet.start_daemon(())
        self.fleet.wait_all_healthy()
        self.model = self.fleet.models[0]
        assert self.daemon.proc is not None
        self.proc = psutil.Process(self.daemon.proc.pid)

    def crash(self) -> None:
        d, model, api = self.daemon, self.model, self.fleet.client.api
        self.fleet.wait_stable(model)
        cid = self.fleet.container_id(model)
        c0 = self.proc.cpu_times()
        t_before = time.monotonic()
        api.kill(cid, signal="SIGKILL")
        t_ret = time.monotonic()
        t_ok = live.until_healthy(self.fleet.port[model], step=POLL_S)
        t_start = live.wait_log(d, t_before, 30, event="start in place", model=model)
        t_run = live.wait_log(d, t_before, 30, event="transition", model=model, to="RUNNING")
        time.sleep(0.2)
        c1 = self.proc.cpu_times()
        self.ok.append(t_ok - t_ret)
        self.from_before.append(t_ok - t_before)
        self.to_start.append(t_start - t_ret)
        self.start_to_ok.append(t_ok - t_start)
        self.ok_to_running.append(t_run - t_ok)
        self.cpu.append((c1.user + c1.system) - (c0.user + c0.system))


def bench_crash(r: Report, *, quick: bool, rounds: int | None = None) -> None:
    rounds = rounds or (3 if quick else 15)
    demo = live.demo_model()
    floor = live.Floor(demo)
    plain = Ours(demo)
    api_floor: list[float] = []
    cli_floor: list[float] = []
    at_once: list[float] = []
    loads: list[float] = []
    try:
        plain.start()
        api = plain.fleet.client.api
        subprocess.run(live.docker_run_argv(floor.spec, floor.name), check=True, capture_output=True, timeout=60)
        live.until_healthy(floor.port)

        def floor_start(cli: bool) -> None:
            api.kill(floor.name, signal="SIGKILL")
            live.wait_for(lambda: api.inspect_container(floor.name)["State"]["Status"] == "exited", 30,
                          "floor container exited", step=0.02)
            time.sleep(SETTLE_S)
            t0 = time.monotonic()
            if cli:
                subprocess.run(["docker", "start", floor.name], check=True, capture_output=True, timeout=60)
            else:
                api.start(floor.name)
            (cli_floor if cli else api_floor).append(live.until_healthy(floor.port, step=POLL_S) - t0)

        steps = [lambda: floor_start(False), lambda: floor_start(True), plain.crash]
        for i in range(rounds):
            loads.append(os.getloadavg()[0])
            k = i % len(steps)
            for step in steps[k:] + steps[:k]:
                step()
            # Docker's teardown: the floor killed and started at once, timed from the kill's return
            api.kill(floor.name, signal="SIGKILL")
            t_ret = time.monotonic()
            api.start(floor.name)
            at_once.append(live.until_healthy(floor.port, step=POLL_S) - t_ret)
            print(f"crash {i + 1}/{rounds}: floor api {api_floor[-1]:.3f}s cli {cli_floor[-1]:.3f}s "
                  f"at once {at_once[-1]:.3f}s | ours {plain.ok[-1]:.3f}s (start call at "
                  f"+{plain.to_start[-1] * 1000:.0f} ms)", flush=True)
    finally:
        floor.close()
        plain.fleet.close()

    fl = of(api_floor)
    r.time_row("**floor** (in place): `APIClient.start` of the stopped container -> /health 200", fl, digits=3)
    r.time_row("  for reference: the same with the `docker start` command", of(cli_floor), floor=fl.median,
               digits=3)
    r.time_row("  for reference: killed and started at once, from the kill's return (Docker's teardown)",
               of(at_once), floor=fl.median, digits=3)
    r.time_row("crash -> healthy: kill call returned -> replacement /health 200", of(plain.ok),
               target="<= 1.05x the in-place floor", limit=1.05 * fl.median, floor=fl.median, digits=3)
    r.time_row("  for reference: from before the kill call (the kill itself included)", of(plain.from_before),
               floor=fl.median, digits=3)
    r.time_row("  kill returned -> daemon logs `start in place` (event, loop, checks before a start)",
               of(plain.to_start), digits=3)
    r.time_row("  `start in place` logged -> /health 200 (Docker and the load)", of(plain.start_to_ok),
               floor=fl.median, digits=3)
    r.time_row("  /health 200 -> daemon logs RUNNING (starting probe, KV restore, loop)", of(plain.ok_to_running),
               digits=3)
    r.time_row("  daemon CPU time per crash restart (kill -> RUNNING + 0.2 s)", of(plain.cpu), unit="ms",
               scale=1000, digits=0)
    r.notes.append("Load average (1 min) at the start of each round: "
                   + ", ".join(f"{x:.1f}" for x in loads) + f" on {os.cpu_count()} cores.")
    r.how.append(("crash", f"`.venv/bin/python -m bench.run --only crash --out docs/BENCHMARKS.md` (bench/crash.py, "
                  f"whose docstring says what each row times): {rounds} rounds, the two floors and the daemon in a rotating "
                  f"order, one {POLL_S * 1000:.0f} ms /health poll for all; the floor container is killed and left "
                  f"`exited` {SETTLE_S:g} s before its start, ours is started by the daemon as soon as it sees the "
                  "death"))
