"""Reads the manifests in a short-lived child process and hands the daemon plain DesiredModel values.

The long-lived daemon then never imports pydantic, PyYAML or the renderer
(~11 MiB of its RSS: docs/BENCHMARKS.md), and the parsing of files a hostile
manifest author wrote runs in a process with its own address-space limit
(READ_MEMORY_BYTES) and a deadline (READ_TIMEOUT_S, and never more than half the
systemd watchdog: the loop thread waits for the read, `read_timeout_s`): a parser bug, a deep
recursion or a memory blow-up costs one failed read ("keeping the last good
set"), never the daemon. The child prints one JSON object on stdout:

    {"desired": {NAME: <DesiredModel as JSON>}, "problems": [...]}   or   {"error": "...", "problems": [...]}

`encode` / `decode` are the two halves of that format; they are pure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from supervisor.core.spec import (
    ContainerSpec,
    DesiredModel,
    GpuRequest,
    HealthPolicy,
    KvCache,
    LoadPolicy,
    Mount,
    RestartPolicy,
    RestartSettings,
    Serving,
)
from supervisor.artifacts.lock import LockView
from supervisor.errors import ManifestError, SupervisorError

READ_TIMEOUT_S = 60.0
READ_MEMORY_BYTES = 1 << 30        # the child's address space; a manifest set needs a few tens of MiB


def read_timeout_s(watchdog_interval_s: float | None) -> float:
    """The reader's deadline: READ_TIMEOUT_S, cut to the watchdog's ping interval (half of WATCHDOG_USEC).

    The loop thread pings the watchdog, then waits for the read: a read that ends by then
    leaves the other half of the watchdog's time for the rest of the iteration (issue 15:
    a 60 s deadline under WatchdogSec=30 would have let systemd kill the daemon).
    """
    if watchdog_interval_s is None or watchdog_interval_s <= 0:
        return READ_TIMEOUT_S
    return min(READ_TIMEOUT_S, watchdog_interval_s)


def encode(m: DesiredModel) -> dict[str, Any]:
    d = asdict(m)
    d["restart"]["policy"] = m.restart.policy.value
    d["serving"]["lifecycle"] = m.serving.lifecycle.value
    return d


def decode(d: Mapping[str, Any]) -> DesiredModel:
    s = dict(d["spec"])
    gpu = s.get("gpu")
    spec = ContainerSpec(**{
        **s,
        "argv": tuple(s["argv"]),
        "mounts": tuple(Mount(**mt) for mt in s["mounts"]),
        "gpu": None if gpu is None else GpuRequest(vendor=gpu["vendor"], device_ids=tuple(gpu["device_ids"]),
                                                   capabilities=tuple(gpu["capabilities"])),
    })
    restart = dict(d["restart"])
    serving = dict(d["serving"])
    return DesiredModel(
        name=d["name"], spec=spec, health=HealthPolicy(**d["health"]),
        restart=RestartSettings(**{**restart, "policy": RestartPolicy(restart["policy"])}),
        model_path=d["model_path"], source_file=d["source_file"], api_key_file=d["api_key_file"],
        serving=Serving(**{**serving, "aliases": tuple(serving["aliases"]), "lifecycle": LoadPolicy(serving["lifecycle"])}),
        kv=KvCache(**d.get("kv", {})),
    )


def read(manifests: Path, lock_path: Path, host_json: str, *, timeout_s: float = READ_TIMEOUT_S,
         lock_view: LockView = "images", kv_off: str = "") -> tuple[dict[str, DesiredModel], list[str]]:
    """render.load_desired in a child process: (desired, problems); ManifestError / SupervisorError as it raises.
    lock_view: the lock's section to render against, as the runtime's adapter names it (RuntimeAdapter.lock_view).
    kv_off: the daemon's reason to keep no KV cache ('' when it may)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor.render.reader", str(manifests), str(lock_path),
             "--lock-view", lock_view, "--kv-off", kv_off],
            input=host_json, capture_output=True, text=True, timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as e:
        raise SupervisorError(f"reading the manifests in {manifests} took over {timeout_s:g}s; gave up") from e
    try:
        out = json.loads(proc.stdout)
    except ValueError as e:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SupervisorError(f"the manifest reader failed (exit {proc.returncode}): {' | '.join(tail)}") from e
    if "error" in out:
        if out.get("problems"):
            raise ManifestError(list(out["problems"]))
        raise SupervisorError(str(out["error"]))
    return {n: decode(m) for n, m in out["desired"].items()}, list(out["problems"])


def _child(argv: list[str]) -> int:
    import resource

    from supervisor.artifacts import hardware
    from supervisor.render import desired as render
    from supervisor.artifacts.lock import read_lock

    try:
        resource.setrlimit(resource.RLIMIT_AS, (READ_MEMORY_BYTES, READ_MEMORY_BYTES))
    except (ValueError, OSError):
        pass
    manifests, lock_path = Path(argv[0]), Path(argv[1])
    h = json.loads(sys.stdin.read())
    host = hardware.HostInfo(cores=h["cores"], memory_bytes=h["memory_bytes"], arch=h["arch"],
                             cpu_flags=frozenset(h["cpu_flags"]),
                             gpus=tuple(hardware.GpuInfo(**g) for g in h["gpus"]),
                             emulates=frozenset(h.get("emulates") or ()))
    try:
        lock = read_lock(lock_path)
        view = argv[argv.index("--lock-view") + 1] if "--lock-view" in argv else "images"
        kv_off = argv[argv.index("--kv-off") + 1] if "--kv-off" in argv else ""
        desired, problems = render.load_desired(manifests, lock.view(view), host,  # type: ignore[arg-type]
                                                kv_off=kv_off)
        out: dict[str, Any] = {"desired": {n: encode(m) for n, m in desired.items()}, "problems": problems}
    except ManifestError as e:
        out = {"error": str(e), "problems": e.problems}
    except SupervisorError as e:
        out = {"error": str(e)}
    except MemoryError:
        out = {"error": f"reading the manifests in {manifests} needed more than {READ_MEMORY_BYTES >> 20} MiB"}
    sys.stdout.write(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
