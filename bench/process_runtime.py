"""Process runtime vs Docker on this host, same model, plus the bare llama-server floor.

    .venv/bin/python -m bench.process_runtime [--runs 5] [--out docs/BENCHMARKS.md]

For each runtime one daemon supervises the demo model (ctx 512, 1 thread, default
probes): start -> healthy is `start` on the control socket until /health answers
200 (after a `stop`); SIGKILL -> healthy kills the model's process (the container's
main process under Docker) after it has been stable 10 s, until /health answers.
The floor is the same binary started by hand with the same arguments, until
/health answers. Medians of --runs; the section between the markers is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import psutil

from bench import live
from bench.stats import Sample
from supervisor.artifacts import binaries
from supervisor import paths
from supervisor.control.client import ControlClient
from supervisor.artifacts.lock import ImageLock, read_lock, write_lock
from supervisor.runtime.process.records import ProcessRecord, proof
from tests.integration.daemon_harness import instance_for

BEGIN, END = "<!-- bench.process_runtime:begin -->", "<!-- bench.process_runtime:end -->"


def process_pid(fleet: live.Fleet, model: str) -> int:
    d = paths.state_dir() / "processes" / instance_for(fleet.dir) / "records"
    for f in d.glob("*.json"):
        r = ProcessRecord.from_json(json.loads(f.read_text()))
        if r.model == model and r.status == "running" and r.pid and proof(r) is None:
            return r.pid
    raise RuntimeError(f"no live process for {model}")


def measure(runtime: str, lock: Path, runs: int) -> dict[str, Sample | float]:
    fleet = live.Fleet(live.demo_model(), 1, prefix=f"b{runtime[:2]}")
    model = fleet.models[0]
    fleet.daemon = live.Daemon(fleet.dir, extra=["--resync-interval", "30", "--stop-timeout", "10",
                                                 "--runtime", runtime, "--lock", str(lock)]).start()
    sock = fleet.daemon.sockdir / "ctl.sock"
    try:
        fleet.wait_all_healthy()
        rss = psutil.Process(fleet.daemon.proc.pid).memory_info().rss / 2**20  # type: ignore[union-attr]
        starts, kills = [], []
        with ControlClient(sock, timeout=300) as c:
            for _ in range(runs):
                c.stop([model])
                t0 = time.monotonic()
                c.start([model], wait=False)
                starts.append(live.until_healthy(fleet.port[model]) - t0)
                fleet.daemon.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == model
                                      and r.get("to") == "RUNNING", live.LOAD_TIMEOUT_S, "RUNNING", since=t0)
        # t0 is now the last start's time: its RUNNING is the first one logged since
        for _ in range(runs):
            wait_stable_since(fleet, model, t0)
            if runtime == "process":
                pid = process_pid(fleet, model)
                t0 = time.monotonic()
                os.kill(pid, signal.SIGKILL)
            else:
                t0 = time.monotonic()
                fleet.client.api.kill(fleet.container_id(model), signal="SIGKILL")
            wait_down(fleet.port[model])
            kills.append(live.until_healthy(fleet.port[model]) - t0)
            path = [f"{r.get('to')}({r.get('reason', '')[:60]})" for t, r in list(fleet.daemon.lines)
                    if t >= t0 and r.get("event") == "transition" and r.get("model") == model]
            print(f"{runtime} SIGKILL -> healthy {kills[-1]:.2f} s via {' > '.join(path)}", file=sys.stderr)
            if any(step.startswith("BACKOFF") for step in path):
                raise RuntimeError(f"{runtime}: the kill was counted as a failed start, not timed: {path}")
        return {"start": Sample(tuple(starts)), "sigkill": Sample(tuple(kills)), "rss_mib": rss}
    finally:
        if fleet.daemon.proc and fleet.daemon.proc.poll() is None:
            with ControlClient(sock, timeout=60) as c:
                c.shutdown(stop_models=True)
            fleet.daemon.proc.wait(60)
        fleet.close()
        shutil.rmtree(paths.state_dir() / "processes" / instance_for(fleet.dir), ignore_errors=True)


def wait_stable_since(fleet: live.Fleet, model: str, t0: float) -> None:
    """Until the daemon has logged RUNNING for the model after t0, and then stable_after_s more.

    live.Fleet.wait_stable takes the last RUNNING in the log, right where the caller has waited for
    the restart's own RUNNING (bench.run does). Here /health answers before the daemon's next probe,
    so that would be the previous RUNNING: a kill would land in STARTING and count as a failed
    start (BACKOFF), not as a crash after a stable run."""
    assert fleet.daemon is not None
    t_run, _ = fleet.daemon.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == model
                                     and r.get("to") == "RUNNING", live.LOAD_TIMEOUT_S, f"{model} RUNNING", since=t0)
    remaining = t_run + live.STABLE_AFTER_S + 0.5 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def wait_down(port: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and live.healthy(port):
        time.sleep(0.01)


def floor(binary: str, runs: int) -> Sample:
    demo = live.demo_model()
    values = []
    for _ in range(runs):
        port = live.free_port()
        t0 = time.monotonic()
        proc = subprocess.Popen([binary, "--model", str(demo), "--host", "127.0.0.1", "--port", str(port),
                                 "--ctx-size", "512", "--threads", "1", "--no-webui"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            values.append(live.until_healthy(port) - t0)
        finally:
            proc.kill()
            proc.wait()
    return Sample(tuple(values))


def _vals(sample: object) -> str:
    assert isinstance(sample, Sample)
    return " ".join(f"{v:.2f}" for v in sample.values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    client = docker.from_env(timeout=60)
    variant = os.environ.get("LLAMA_SUPERVISOR_TEST_VARIANT") or "cpu-avx2"
    image = read_lock(paths.lock_path()).get(variant)
    if image is None:
        raise SystemExit(f"no {variant} image in {paths.lock_path()}")
    native = binaries.from_image(client, image, progress=lambda _: None)
    lock = Path(paths.state_dir()) / "bench-process.lock.json"
    write_lock(lock, ImageLock().with_record(image).with_binary(native))
    t0 = time.monotonic()
    bare = floor(native.path, args.runs)
    proc = measure("process", lock, args.runs)
    dock = measure("docker", lock, args.runs)
    lines = [
        BEGIN,
        "## Process runtime vs Docker (bench.process_runtime)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, demo model (ctx 512, "
        f"1 thread), {variant} binary {native.sha256[:12]} taken out of image {image.image_id[:19]}; "
        f"medians of {args.runs} ({time.monotonic() - t0:.0f} s in all; other engineers' tests shared the host).",
        "",
        "| figure | process runtime | Docker | bare llama-server |",
        "|---|---|---|---|",
        f"| start -> /health 200 | {proc['start'].fmt()} | {dock['start'].fmt()} | {bare.fmt()} |",
        f"| SIGKILL -> /health 200 | {proc['sigkill'].fmt()} | {dock['sigkill'].fmt()} | - |",
        f"| daemon RSS after start | {proc['rss_mib']:.1f} MiB | {dock['rss_mib']:.1f} MiB | - |",
        "",
        f"Values (s): process start {_vals(proc['start'])}, SIGKILL {_vals(proc['sigkill'])}; Docker start "
        f"{_vals(dock['start'])}, SIGKILL {_vals(dock['sigkill'])}; bare {_vals(bare)}.",
        "",
        "start: `start` on the control socket after a `stop`; SIGKILL: kill -9 of the model's process "
        "(Docker: `docker kill -s KILL`) once stable 10 s; bare: the binary run by hand with the same flags.",
        END,
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.out:
        old = args.out.read_text()
        if BEGIN in old and END in old:
            head, rest = old.split(BEGIN, 1)
            new = head + section.rstrip("\n") + rest.split(END, 1)[1]
        else:
            new = old.rstrip("\n") + "\n\n" + section
        args.out.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
