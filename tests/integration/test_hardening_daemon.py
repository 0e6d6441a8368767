"""Issue 11 on the real engine, one `llama-supervisord --no-watch` for the module: explicit updates only,
container logs that rotate while `tail` keeps working, FATAL kept across a kill -9 of the daemon, and a
followed log that a hung-up client stops at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from supervisor import paths
from supervisor.runtime.docker.runtime import DockerRuntime

from .daemon_harness import Daemon, container, free_port, healthy, instance_for, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker

CTL = str(Path(sys.executable).with_name("llama-supervisorctl"))


@dataclass
class Rig:
    dir: Path
    daemon: Daemon
    demo: Path
    names: list[str]
    metrics_port: int = 0

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        sock = str(self.daemon.sockdir / "ctl.sock")
        return subprocess.run([CTL, "--socket", sock, *args], capture_output=True, text=True, timeout=timeout)

    def status(self, name: str) -> dict[str, object] | None:
        out = self.ctl("status", "--json", name)
        rows = json.loads(out.stdout or "[]")
        return rows[0] if rows else None

    def start_daemon(self) -> Daemon:
        self.metrics_port = self.metrics_port or free_port()
        self.daemon = Daemon(self.dir, extra=["--no-watch", "--metrics-port", str(self.metrics_port)]).start()
        self.daemon.wait_log(lambda r: r.get("event") == "ready", 60, "daemon ready")
        return self.daemon


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
        image_record: object, demo_model: Path) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("hardening"), None, demo_model, [])  # type: ignore[arg-type]
    r.start_daemon()
    try:
        yield r
    finally:
        if r.daemon.proc and r.daemon.proc.poll() is None:
            r.daemon.terminate()
        remove_models(docker_client, r.names)
        paths.state_dir().joinpath(f"models.{instance_for(r.dir)}.state.json").unlink(missing_ok=True)


def chatty_yaml(name: str, port: int, demo: Path) -> str:
    """The harness's light model, logging every request (--verbose) into an 8 KiB x 2 json-file log.

    (With 1 KiB files Docker 20.10's json-file follow can stall when its reader falls a whole file
    behind; real sizes are megabytes.)"""
    text = model_yaml(name, port, demo, demo.parent.name)
    text = text.replace("  threads: 1\n", "  threads: 1\n  extra_args: [--verbose]\n")
    return text + "logs:\n  max_size: 8k\n  max_files: 2\n"


def test_no_watch_applies_a_new_manifest_only_on_update(rig: Rig) -> None:
    name, port = f"hlog{uuid.uuid4().hex[:6]}", free_port()
    rig.names.append(name)
    (rig.dir / f"{name}.yaml").write_text(chatty_yaml(name, port, rig.demo))
    time.sleep(1.5)                                       # the watcher would have applied it by now
    assert rig.status(name) is None
    assert rig.ctl("status", name).returncode == 4
    out = rig.ctl("reread")
    assert (out.returncode, out.stdout.strip()) == (0, f"{name}: available"), out
    assert rig.status(name) is None                       # reread only reports
    out = rig.ctl("update")
    assert (out.returncode, out.stdout.strip()) == (0, f"{name}: available"), out
    wait_for(lambda: healthy(port), 120, f"{name} healthy")
    wait_for(lambda: (rig.status(name) or {}).get("state") == "RUNNING", 30, f"{name} RUNNING")


def test_container_logs_rotate_and_tail_follows_across_rotations(rig: Rig, docker_client: docker.DockerClient) -> None:
    name = rig.names[0]                                   # the chatty model the previous test added
    port = int((rig.status(name) or {})["port"])          # type: ignore[arg-type]
    c = container(docker_client, name)
    assert c.attrs["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "8192", "max-file": "2"}}

    follow = subprocess.Popen([CTL, "--socket", str(rig.daemon.sockdir / "ctl.sock"), "tail", "-f", "-n", "0", name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = bytearray()

    def read() -> None:
        assert follow.stdout is not None
        while chunk := follow.stdout.read1(65536):     # type: ignore[attr-defined]
            got.extend(chunk)

    threading.Thread(target=read, daemon=True).start()
    try:
        time.sleep(0.5)
        with httpx.Client(timeout=5) as http:
            for _ in range(600):                          # each request logs ~80 bytes with --verbose
                http.get(f"http://127.0.0.1:{port}/v1/models")
                time.sleep(0.005)
        # tail -f kept going across rotations: more than twice what the two 8 KiB files can hold
        wait_for(lambda: len(got) > 32 * 1024, 30, "tail -f output past several rotations")
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(10)
    log_path = Path(c.attrs["LogPath"])
    files = sorted(p.name for p in log_path.parent.iterdir() if p.name.startswith(log_path.name))
    assert files == [log_path.name, log_path.name + ".1"], files
    assert all((log_path.parent / f).stat().st_size <= 8192 + 512 for f in files)
    everything = c.logs()
    assert len(everything) <= 2 * (8192 + 512), len(everything)      # the engine kept only what rotation allows
    assert b"loading model" not in everything                           # the start-up lines rotated away
    out = rig.ctl("tail", "-n", "3", name)
    assert out.returncode == 0 and len(out.stdout.strip().splitlines()) == 3, out


def test_the_api_key_appears_nowhere_the_supervisor_writes_or_shows(rig: Rig, docker_client: docker.DockerClient,
                                                                    tmp_path: Path) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    key = tmp_path / "api.key"
    key.write_text(secret + "\n")
    key.chmod(0o644)
    name, port = f"hkey{uuid.uuid4().hex[:6]}", free_port()
    rig.names.append(name)
    (rig.dir / f"{name}.yaml").write_text(model_yaml(name, port, rig.demo, rig.demo.parent.name, api_key_file=key))
    assert rig.ctl("update").returncode == 0
    wait_for(lambda: healthy(port), 120, f"{name} healthy")
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {secret}"},
                     timeout=5).status_code == 200                     # the key is in force
    httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=5)
    c = container(docker_client, name)
    seen = {
        "docker inspect (Cmd, Env, Labels, Args, HostConfig)": json.dumps(c.attrs),
        "daemon log": rig.daemon.dump() + json.dumps([r for _, r in rig.daemon.lines]),
        "status --json": rig.ctl("status", "--json").stdout,
        "tail": rig.ctl("tail", "-n", "1000", name).stdout,
        "metrics": httpx.get(f"http://127.0.0.1:{rig.metrics_port}/metrics", timeout=5).text,
        "image lock": paths.lock_path().read_text(),
        "container log": c.logs().decode(errors="replace"),
    }
    state = paths.state_dir() / f"models.{instance_for(rig.dir)}.state.json"
    if state.exists():
        seen["state file"] = state.read_text()
    assert name in seen["status --json"] and "llama_" in seen["metrics"]   # each place was really looked at
    assert [where for where, text in seen.items() if secret in text] == []
    (rig.dir / f"{name}.yaml").unlink()
    assert rig.ctl("update").returncode == 0


def test_fatal_survives_kill9_of_the_daemon_until_an_explicit_start(rig: Rig, docker_client: docker.DockerClient) -> None:
    name, port = f"hoom{uuid.uuid4().hex[:6]}", free_port()
    rig.names.append(name)
    restart = "restart:\n  backoff_initial: 0.2\n  backoff_max: 1\n  max_failures: 2\n"
    (rig.dir / f"{name}.yaml").write_text(model_yaml(name, port, rig.demo, rig.demo.parent.name, memory="40m",
                                                     restart=restart))       # OOMKilled while loading
    t0 = time.monotonic()
    assert rig.ctl("update").returncode == 0
    _, fatal = rig.daemon.wait_log(lambda r: r.get("model") == name and r.get("to") == "FATAL", 60, "FATAL",
                                   since=t0)
    state_file = paths.state_dir() / f"models.{instance_for(rig.dir)}.state.json"
    wait_for(lambda: state_file.exists() and name in json.loads(state_file.read_text())["models"], 10, "state file")
    c = container(docker_client, name)
    started = c.attrs["State"]["StartedAt"]

    rig.daemon.kill9()
    d2 = rig.start_daemon()
    st = rig.status(name)
    assert st is not None and st["state"] == "FATAL" and st["reason"] == fatal["reason"], (st, fatal)
    time.sleep(3)                                         # the new daemon does not try it again
    assert not d2.find(lambda r: r.get("model") == name and r.get("to") == "STARTING")
    c.reload()
    assert (c.status, c.attrs["State"]["StartedAt"]) == ("exited", started)

    t1 = time.monotonic()
    out = rig.ctl("start", name)                           # the explicit start clears it and tries again
    assert out.returncode != 0 and name in out.stdout       # (it is still a model that cannot fit in 40m)
    d2.wait_log(lambda r: r.get("model") == name and r.get("to") == "STARTING", 30, "started again", since=t1)


def test_a_followed_container_log_ends_at_once_when_closed_from_another_thread(
    docker_client: docker.DockerClient, image_record: object, demo_model: Path
) -> None:
    """What the control server does when a `tail -f` client hangs up, on a real container with no new lines."""
    name = f"llama-supervisor-test-quiet-{uuid.uuid4().hex[:6]}"
    c = docker_client.containers.run(
        image_record.image_id,                             # type: ignore[attr-defined]
        ["-m", "/models/m.gguf", "-c", "512", "-t", "1", "--host", "127.0.0.1", "--port", "8080"],
        name=name, detach=True, user="65532:65532", network_disabled=True, read_only=True,
        volumes={str(demo_model): {"bind": "/models/m.gguf", "mode": "ro"}},
    )
    rt = DockerRuntime(docker_client)
    try:
        wait_for(lambda: b"listening" in c.logs(), 60, "quiet container loaded")
        time.sleep(1)
        stream = rt.logs(c.id, lines=1, follow=True)
        next(stream)                                      # the last line; then nothing more will come
        threading.Timer(0.5, stream.close).start()        # type: ignore[attr-defined]
        t0 = time.monotonic()
        rest = list(stream)
        assert time.monotonic() - t0 < 3, "closing did not end the blocked read"
        assert rest == []
    finally:
        c.remove(force=True)
