"""Pieces the real-engine benchmarks share: a fleet of light models under a real daemon, the bare
`docker run` floor with the same spec, /health polling and the daemon's RSS, CPU and file descriptors.

The daemon subprocess and its JSON log come from tests/integration/daemon_harness.py (reused, not
copied): each log line is stamped with time.monotonic() when this process reads it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import psutil

from supervisor import paths
from supervisor.core.spec import ContainerSpec, DesiredModel
from supervisor.runtime import container_name
from tests.integration.daemon_harness import (  # noqa: F401  (re-exported for bench.run and bench.soak)
    Daemon,
    container,
    free_port,
    healthy,
    instance_for,
    model_yaml,
    remove_models,
    wait_for,
)

DEMO_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
DEMO_FILE = "gemma-3-270m-q4_k_m.gguf"
LOAD_TIMEOUT_S = 120.0
POLL_S = 0.02                 # /health poll step for every "until healthy" figure
STABLE_AFTER_S = 10.0         # RestartSettings.stable_after_s: a crash later than this restarts at once


def demo_model() -> Path:
    from supervisor.artifacts.modelsrc import cache_path

    path = cache_path(DEMO_SHA256, DEMO_FILE)
    if not path.exists():
        raise SystemExit(f"demo model missing at {path}: run 'make model' first")
    return path


def until_healthy(port: int, *, timeout: float = LOAD_TIMEOUT_S, step: float = POLL_S) -> float:
    """Poll http://127.0.0.1:port/health every `step` s; the monotonic time of the first 200."""
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=0.5) as http:
        while time.monotonic() < deadline:
            try:
                if http.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(step)
    raise TimeoutError(f"127.0.0.1:{port}/health not 200 within {timeout}s")


def render_one(directory: Path) -> dict[str, DesiredModel]:
    """The DesiredModels the daemon would render from `directory` (same loader, lock and host)."""
    from supervisor.cli.daemon import make_loader

    return dict(make_loader(directory, paths.lock_path())())


def docker_run_argv(spec: ContainerSpec, name: str) -> list[str]:
    """`docker run` with the hardening DockerRuntime applies (runtime/docker/runtime.py host_config_kwargs),
    on the daemon's own bridge network (inter-container traffic off): joining it is part of every start."""
    ensure_network(spec.network)
    argv = ["docker", "run", "-d", "--name", name, "--user", spec.user, "--network", spec.network,
            "--log-driver", "json-file", "--log-opt", f"max-size={spec.log_max_bytes}",
            "--log-opt", f"max-file={spec.log_max_files}",
            "--tmpfs", f"/tmp:rw,noexec,nosuid,size={spec.tmpfs_size}",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
            "--pids-limit", str(spec.pids_limit), "--restart", "no",
            "--cpu-shares", str(spec.cpu_shares),
            "-p", f"{spec.host_ip}:{spec.host_port}:{spec.container_port}"]
    if spec.read_only_rootfs:
        argv.append("--read-only")
    for m in spec.mounts:
        argv += ["--mount", f"type=bind,src={m.source},dst={m.target}" + (",readonly" if m.read_only else "")]
    if spec.memory_bytes is not None:
        argv += ["--memory", str(spec.memory_bytes), "--memory-swap", str(spec.memory_bytes)]
    if spec.nano_cpus is not None:
        argv += ["--cpus", str(spec.nano_cpus / 1e9)]
    if spec.cpuset is not None:
        argv += ["--cpuset-cpus", spec.cpuset]
    return [*argv, spec.image_id, *spec.argv]


def ensure_network(name: str) -> None:
    """The daemon's models network, made by the runtime's own code if no daemon has made it yet."""
    from supervisor.runtime.docker.runtime import DockerRuntime

    if name in ("bridge", "default", "host", "none"):
        return
    rt = DockerRuntime()
    try:
        rt.ensure_network(name)
    finally:
        rt.client.close()


class Floor:
    """Bare Docker with the daemon's own spec for one light model: `docker run` and `docker start`."""

    def __init__(self, demo: Path, *, memory: str = "1g") -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.dir = Path(tempfile.mkdtemp(prefix="bench-floor-"))
        self.model = f"bench{self.tag}-floor"
        self.port = free_port()
        (self.dir / "m.yaml").write_text(model_yaml(self.model, self.port, demo, DEMO_SHA256, memory=memory))
        self.spec = render_one(self.dir)[self.model].spec
        self.name = f"bench-floor-{self.tag}"

    def run_once(self) -> float:
        """Seconds from `docker run` (CLI subprocess) to /health 200; removes the container after."""
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)
        t0 = time.monotonic()
        subprocess.run(docker_run_argv(self.spec, self.name), check=True, capture_output=True, timeout=60)
        t1 = until_healthy(self.port)
        return t1 - t0

    def start_once(self) -> float:
        """Seconds from `docker start` of the stopped container to /health 200 (the in-place floor)."""
        subprocess.run(["docker", "kill", self.name], capture_output=True, timeout=60)
        wait_for(lambda: _state(self.name) == "exited", 30, "floor container exited")
        t0 = time.monotonic()
        subprocess.run(["docker", "start", self.name], check=True, capture_output=True, timeout=60)
        return until_healthy(self.port) - t0

    def close(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)


def _state(name: str) -> str:
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", name], capture_output=True, text=True,
                         timeout=30)
    return out.stdout.strip()


class Fleet:
    """N light models in a fresh manifest directory, supervised by a real llama-supervisord."""

    def __init__(self, demo: Path, n: int, *, prefix: str = "bench") -> None:
        tag = uuid.uuid4().hex[:6]
        self.demo = demo
        self.dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-manifests-"))
        self.models = [f"{prefix}{tag}-{chr(ord('a') + i)}" for i in range(n)]
        self.port = {m: free_port() for m in self.models}
        self.ctx = {m: 512 for m in self.models}
        for m in self.models:
            self.write(m)
        self.daemon: Daemon | None = None
        self.client = docker.from_env(timeout=60)

    def write(self, model: str, *, ctx: int | None = None) -> None:
        """Write the manifest aside and rename it over, as editors save."""
        if ctx is not None:
            self.ctx[model] = ctx
        tmp = self.dir / f".{model}.tmp"
        tmp.write_text(model_yaml(model, self.port[model], self.demo, DEMO_SHA256, ctx=self.ctx[model],
                                  fast_probes=False))
        tmp.rename(self.dir / f"{model}.yaml")

    def start_daemon(self, extra: tuple[str, ...] = ()) -> Daemon:
        # The harness passes --resync-interval 5 --stop-timeout 3; the last value of an option wins,
        # so the benchmark daemon runs with the daemon's defaults for both.
        self.daemon = Daemon(self.dir, extra=["--resync-interval", "30", "--stop-timeout", "10", *extra]).start()
        return self.daemon

    def all_healthy(self) -> bool:
        return all(healthy(self.port[m]) for m in self.models)

    def wait_all_healthy(self, timeout: float = 3 * LOAD_TIMEOUT_S) -> None:
        wait_for(self.all_healthy, timeout, "every model healthy", step=0.1)

    def running_since(self, model: str) -> float:
        """Monotonic receipt time of the model's last transition to RUNNING in the daemon's log."""
        assert self.daemon is not None
        last = 0.0
        with self.daemon._lock:
            for t, rec in self.daemon.lines:
                if rec.get("event") == "transition" and rec.get("model") == model and rec.get("to") == "RUNNING":
                    last = t
        return last

    def wait_stable(self, model: str) -> None:
        """Until the model has been RUNNING longer than stable_after_s (so a crash restarts at once)."""
        wait_for(lambda: self.running_since(model) > 0, LOAD_TIMEOUT_S, f"{model} RUNNING", step=0.05)
        remaining = self.running_since(model) + STABLE_AFTER_S + 0.5 - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def container(self, model: str) -> Any:
        """The model's container (found by label, as the daemon finds it); docker.errors.NotFound if none."""
        return container(self.client, model, instance_for(self.dir))

    def container_name(self, model: str) -> str:
        """The name the daemon gives the model's container: it carries the test daemon's instance."""
        return container_name(model, instance_for(self.dir))

    def container_id(self, model: str) -> str:
        """The model's container ID; "" in the moment of a recreate between remove and create."""
        import docker.errors

        try:
            return str(self.container(model).id)
        except docker.errors.NotFound:
            return ""

    def new_container_id(self, model: str, old: set[str]) -> str | None:
        """The model's container ID if it is not one of `old`; None while there is none (a recreate
        removes the old container before it creates the new one) or it is still an old one."""
        try:
            cid = self.container_id(model)
        except docker.errors.NotFound:
            return None
        return cid if cid not in old else None

    def identity(self, model: str) -> tuple[str, str]:
        c = self.container(model)
        return str(c.id), str(c.attrs["State"]["StartedAt"])

    def close(self) -> None:
        if self.daemon is not None and self.daemon.proc is not None and self.daemon.proc.poll() is None:
            try:
                self.daemon.terminate(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill9()
        remove_models(self.client, self.models)
        self.client.close()


@dataclass(frozen=True)
class ProcStats:
    rss_bytes: int
    fds: int
    threads: int
    uss_bytes: int = 0      # pages only this process maps (RSS less shared libraries and shared pages)


def proc_stats(pid: int) -> ProcStats:
    p = psutil.Process(pid)
    return ProcStats(rss_bytes=p.memory_info().rss, fds=p.num_fds(), threads=p.num_threads(),
                     uss_bytes=p.memory_full_info().uss)


def idle_cpu_percent(pid: int, seconds: float) -> float:
    """Percent of one core the process used over `seconds` (user + system CPU time / wall time)."""
    p = psutil.Process(pid)
    c0, t0 = p.cpu_times(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = p.cpu_times(), time.monotonic()
    used = (c1.user - c0.user) + (c1.system - c0.system)
    return 100.0 * used / (t1 - t0)


def find_log(daemon: Daemon, since: float, **match: Any) -> float | None:
    """Receipt time of the first log record at or after `since` whose fields equal `match`."""
    hit = daemon.find(lambda r: all(r.get(k) == v for k, v in match.items()), since)
    return hit[0] if hit else None


def wait_log(daemon: Daemon, since: float, timeout: float, **match: Any) -> float:
    t, _ = daemon.wait_log(lambda r: all(r.get(k) == v for k, v in match.items()), timeout,
                           f"log {match}", since=since)
    return t


def other_containers(mine: set[str]) -> list[str]:
    out = subprocess.run(["docker", "ps", "--format", "{{.Names}}"], capture_output=True, text=True, timeout=30)
    return [n for n in out.stdout.split() if n not in mine]


def env_ready() -> None:
    os.environ.setdefault("LLAMA_SUPERVISOR_STATE_DIR", str(Path.cwd() / "var" / "state"))
    os.environ.setdefault("LLAMA_SUPERVISOR_CACHE_DIR", str(Path.cwd() / "var" / "cache"))
