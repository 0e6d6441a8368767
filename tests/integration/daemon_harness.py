"""Runs llama-supervisord as a subprocess on a per-test manifest directory and reads its JSON log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

DAEMON = Path(sys.executable).with_name("llama-supervisord")
# The daemons under test resync with the engine this often: a check that nothing happens waits one
# full interval (plus a second), so that a resync pass, the one path not driven by an event, has run.
RESYNC_INTERVAL_S = 5


def write_edited_model(manifest: Path, name: str, demo_model: Path, *, ctx: int, start_timeout: float) -> None:
    """The manifest of a model edited under load (ctx_size is what the edit changes), written atomically:
    parallel 2, probes that a loaded 2-core host does not fail (3 s, 3 failures), the engine picks the port."""
    text = model_yaml(name, None, demo_model, demo_model.parent.name, ctx=ctx, parallel=2, memory="512m",
                      start_timeout=start_timeout)
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    tmp.write_text(text.replace("  failures: 2\n", "  failures: 3\n  timeout: 3\n").replace("  timeout: 1\n", ""))
    tmp.rename(manifest)


def stream_completion(c: httpx.Client, url: str, model: str, tokens: int) -> tuple[int, bool, str]:
    """One streamed completion of `tokens` tokens: (status, complete: the tokens, [DONE] and no error event,
    the last lines)."""
    body = {"model": model, "prompt": "Count to fifty:", "max_tokens": tokens, "ignore_eos": True,
            "temperature": 0, "stream": True}
    lines: list[str] = []
    with c.stream("POST", url, json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
        status = r.status_code
    got = [x for x in lines if x != "[DONE]" and "error" not in json.loads(x)]
    complete = bool(lines) and lines[-1] == "[DONE]" and len(got) >= tokens and not any('"error"' in x for x in lines)
    return status, complete, " | ".join(lines[-2:])[:300]


def completion_speeds(port: int, tokens: int, *, runs: int = 3, timeout: float = 300) -> tuple[list[float], dict[str, Any]]:
    """`runs` completions of `tokens` tokens straight from llama-server on `port` (no prompt cache), each
    checked to hold text: their generation speeds (tokens/s, llama-server's own timings) and the last body."""
    speeds: list[float] = []
    body: dict[str, Any] = {}
    for _ in range(runs):
        r = httpx.post(f"http://127.0.0.1:{port}/completion", timeout=timeout,
                       json={"prompt": "The capital of France is", "n_predict": tokens, "temperature": 0,
                             "cache_prompt": False})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["content"].strip() and body["tokens_predicted"] > 0
        speeds.append(float(body["timings"]["predicted_per_second"]))
    return speeds, body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_yaml(name: str, port: int | None, model_path: Path, sha256: str, *, ctx: int = 512,
               fast_probes: bool = True, memory: str = "1g", api_key_file: Path | None = None,
               restart: str = "", serving: str = "", parallel: int = 1,
               start_timeout: float | None = None) -> str:
    """A light model manifest. fast_probes: probe every 1 s (tests); False keeps the daemon's defaults
    (benchmarks of idle cost measure what an operator gets). restart: a whole `restart:` section.
    port None: the engine picks one (reached through the gateway). serving: top-level gateway keys
    (aliases, lifecycle, idle_ttl, max_queue) as YAML lines. start_timeout: health.start_timeout in seconds
    (None: the daemon scales it from the file size, ~13 s for the demo model, which a loaded host can miss)."""
    health = "  interval: 1\n  timeout: 1\n  failures: 2\n" if fast_probes else ""
    if start_timeout is not None:
        health += f"  start_timeout: {start_timeout:g}\n"
    health = f"health:\n{health}" if health else ""
    key = f"  api_key_file: {api_key_file}\n" if api_key_file else ""
    port_line = f"  port: {port}\n" if port is not None else ""
    return f"""\
kind: model
name: {name}
{serving}source:
  path: {model_path}
  sha256: {sha256}
profile: auto
server:
{port_line}  ctx_size: {ctx}
  threads: 1
  parallel: {parallel}
{key}{health}{restart}resources:
  memory: {memory}
  pids: 128
"""


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def instance_for(manifests: Path) -> str:
    """One daemon instance per manifest directory, the same across restarts of that daemon,
    so concurrent test daemons never remove each other's containers as orphans."""
    import hashlib

    return "test-" + hashlib.sha256(str(manifests.resolve()).encode()).hexdigest()[:12]


def wait_container_healthy(container: Any, port: int, timeout: float = 120) -> None:
    """Until a container started outside the daemon answers /health 200 on 127.0.0.1:port; else fail with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(port, timeout=2):
            return
        time.sleep(0.1)
    raise AssertionError(f"no /health 200 within {timeout:.0f} s; log:\n{container.logs(tail=30).decode()}")


def healthy(port: int, timeout: float = 0.5) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


# Under `systemd-socket-activate` (Daemon(socket_activated=True)): it holds the gateway's and the control
# socket's listening sockets and execs this loop once, on the first connection; the loop starts the daemon
# again each time it exits (a kill -9, a SIGTERM) until the file $0 exists. The inner sh's pid becomes the
# daemon's by exec, so LISTEN_PID is the daemon's own, as systemd would set it for each new service process.
# A daemon that exits by itself (an error, a SIGTERM) is started again after 1 s; one killed by a signal at once.
ACTIVATED_LOOP = ("""while [ ! -e "$0" ]; do sh -c 'export LISTEN_PID=$$; exec "$@"' daemon "$@";"""
                  """ [ $? -gt 128 ] || sleep 1; done""")


class Daemon:
    def __init__(self, manifests: Path, *, extra: list[str] | None = None, env: dict[str, str] | None = None,
                 nofile: int | None = None, socket_activated: bool = False) -> None:
        self.manifests = manifests
        self.nofile = nofile            # RLIMIT_NOFILE (soft and hard) for the daemon, e.g. systemd's 1024
        self.env = env or {}
        self.sockdir = Path(tempfile.mkdtemp(prefix="lsd-"))
        self.extra = extra or []
        # every test daemon gets its own gateway port: concurrent daemons never fight over 8080
        self.gateway_port = free_port()
        if not any(a in ("--no-gateway", "--gateway-listen") for a in self.extra):
            self.extra += ["--gateway-listen", f"127.0.0.1:{self.gateway_port}"]
        # ... and its metrics port: `resyncs()` reads how many resync passes it has made
        if "--metrics-port" in self.extra:
            self.metrics_port = int(self.extra[self.extra.index("--metrics-port") + 1])
        else:
            self.metrics_port = free_port()
            self.extra += ["--metrics-port", str(self.metrics_port)]
        self.socket_activated = socket_activated
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.log_bytes = 0              # every byte the daemon wrote to stdout and stderr
        self._lock = threading.Lock()

    def start(self) -> Daemon:
        env = {**os.environ, **self.env}
        argv = [str(DAEMON), "--manifests", str(self.manifests), "--socket", str(self.socket_path),
                "--log-format", "json", "--resync-interval", str(RESYNC_INTERVAL_S), "--stop-timeout", "3",
                "--instance", instance_for(self.manifests), *self.extra]
        if self.socket_activated:
            # systemd-socket-activate passes its children only PATH, TERM and what -E names
            argv = ["systemd-socket-activate", "-l", f"127.0.0.1:{self.gateway_port}", "-l", str(self.socket_path),
                    "--fdname=gateway:control", *(f"-E{k}" for k in env if not k.startswith("LISTEN_")),
                    "--", "sh", "-c", ACTIVATED_LOOP, str(self.sockdir / "stop"), *argv]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=self._preexec)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    @property
    def socket_path(self) -> Path:
        return self.sockdir / "ctl.sock"

    def _preexec(self) -> None:
        import resource

        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def daemon_pid(self, timeout: float = 60) -> int:
        """The pid of the daemon answering on the control socket now (under socket activation: not proc's)."""
        from supervisor.control.server import probe_pid

        return int(wait_for(lambda: probe_pid(self.socket_path), timeout, "a daemon on the control socket"))

    def kill9_daemon(self) -> int:
        """kill -9 the daemon now running; under socket activation the loop starts the next one. Returns
        the killed pid once it is gone."""
        pid = self.daemon_pid()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, f"pid {pid} gone")
        return pid

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.log_bytes += len(line.encode(errors="replace"))
            try:
                rec = json.loads(line)
            except ValueError:
                rec = {"event": line.rstrip()}
            with self._lock:
                self.lines.append((time.monotonic(), rec))

    def find(self, pred: Callable[[dict[str, Any]], bool], since: float = 0.0) -> tuple[float, dict[str, Any]] | None:
        with self._lock:
            for t, rec in self.lines:
                if t >= since and pred(rec):
                    return t, rec
        return None

    def wait_log(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                 since: float = 0.0) -> tuple[float, dict[str, Any]]:
        return wait_for(lambda: self.find(pred, since), timeout, what)  # type: ignore[no-any-return]

    def dump(self, last: int | None = 60) -> str:
        """The daemon's last `last` log records (None: all of them), one JSON object a line."""
        with self._lock:
            return "\n".join(json.dumps(r) for _, r in self.lines[-last if last else 0:])

    def index(self, pred: Callable[[dict[str, Any]], bool], since: float = 0.0) -> int | None:
        """The position in the log of the first record since `since` that `pred` holds for (the order the
        daemon wrote them in, which read times of one batch cannot tell)."""
        with self._lock:
            return next((i for i, (t, rec) in enumerate(self.lines) if t >= since and pred(rec)), None)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def chat(self, model: str, *, timeout: float = 120.0) -> httpx.Response:
        """A 2-token chat completion through the gateway (a start may take long on a loaded host)."""
        return httpx.post(f"{self.gateway}/v1/chat/completions", timeout=timeout, trust_env=False, json={
            "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "Say hi"}]})

    def model_state(self, name: str) -> str | None:
        """The model's state as the gateway's /v1/models lists it (None: not listed, or no answer)."""
        try:
            got = httpx.get(f"{self.gateway}/v1/models", timeout=5, trust_env=False).json()["data"]
            return {m["id"]: m["state"] for m in got}.get(name)
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def resyncs(self) -> int:
        """Resync passes the daemon has finished (each lists the engine's containers and compares them)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5, trust_env=False).text
        line = next(ln for ln in text.splitlines() if ln.startswith("llama_supervisor_reconcile_duration_seconds_count"))
        return int(float(line.split()[-1]))

    def await_resyncs(self, passes: int, timeout: float = 60) -> None:
        """Wait until `passes` whole resync passes began and ended after this call (the count moves at a
        pass's end, so one under way now is not counted): the one path no event drives has run."""
        start = self.resyncs()
        wait_for(lambda: self.resyncs() >= start + passes + 1, timeout, f"{passes} resync pass(es)", step=0.2)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.socket_activated:       # no new daemon after this one; then SIGTERM the one running
            (self.sockdir / "stop").touch()
            from supervisor.control.server import probe_pid

            pid = probe_pid(self.socket_path)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout)
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        if self.socket_activated:
            (self.sockdir / "stop").touch()
            from supervisor.control.server import probe_pid

            if (pid := probe_pid(self.socket_path)) is not None:
                os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(10)


def container(client: docker.DockerClient, model: str, instance: str | None = None) -> Any:
    """The model's container, found by label as the daemon finds it (its name carries a test daemon's
    instance: llama-supervisor-<instance>-<model>); docker.errors.NotFound when there is none."""
    labels = ["io.llama-supervisor.managed=true", f"io.llama-supervisor.model={model}"]
    if instance is not None:
        labels.append(f"io.llama-supervisor.instance={instance}")
    found = client.containers.list(all=True, filters={"label": labels})
    if not found:
        raise docker.errors.NotFound(f"no container of model {model}" + (f" of instance {instance}" if instance else ""))
    assert len(found) == 1, f"{len(found)} containers of model {model}: {[c.name for c in found]}"
    return found[0]


def identity(client: docker.DockerClient, model: str) -> tuple[str, str]:
    c = container(client, model)
    return c.id, c.attrs["State"]["StartedAt"]


def remove_models(client: docker.DockerClient, models: list[str]) -> None:
    for m in models:
        for c in client.containers.list(all=True, filters={"label": f"io.llama-supervisor.model={m}"}):
            c.remove(force=True)
