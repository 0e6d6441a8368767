"""The abuse suite (issue 15): hostile clients and hostile manifests against one real daemon.

One llama-supervisord, at 1024 file descriptors as under systemd's defaults, on the real engine,
image and demo model, with an open gateway (no gateway keys: the default) serving
    open     always, no key of its own
    keyed    always, its own api_key_file
It runs, bounded in time (about a minute in all):
    slowloris (2,000 half request lines) and 100 stalled 16 MiB uploads at once,
    Host (DNS rebinding) and Origin (CSRF) attacks, a body that is not JSON by type,
    deep JSON, /upstream paths that are not introspection,
    a keyed model through the open gateway,
    every flag of the review that ran code, in a manifest.
The figures (p99, RSS, log growth) are measured in `make bench` (bench/abuse.py, the same attack);
here the assertions are the functional promises, with bounds loose enough for a noisy 2-core host.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from bench.abuse import Attack, Plan, Watch, completion, rss
from tests.integration.daemon_harness import Daemon, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker

CTL = str(Path(sys.executable).with_name("llama-supervisorctl"))
# Each of these ran code, read files or reached the network in the review; none may pass.
EXPLOIT_FLAGS = [
    ["--agent"], ["-ag"], ["--tools", "all"], ["--webui-mcp-proxy"],
    ["--mcp-servers-json", '{"mcpServers":{"x":{"command":"/bin/sh","args":["-c","id > /tmp/f"]}}}'],
    ["--mcp-servers-config", "/etc/passwd"], ["--cors-origins", "*"], ["--slot-save-path", "/tmp"],
]


@dataclass
class Rig:
    dir: Path
    daemon: Daemon
    open: str
    keyed: str

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        sock = str(self.daemon.sockdir / "ctl.sock")
        return subprocess.run([CTL, "--socket", sock, *args], capture_output=True, text=True, timeout=timeout)

    def states(self, *, starting: bool = False) -> dict[str, str]:
        out = self.ctl("status", "--json")
        if starting and not out.stdout.strip():
            return {}                                     # the daemon's socket is not up yet
        assert out.returncode in (0, 3), out.stderr
        return {row["name"]: row["state"] for row in json.loads(out.stdout)}

    def transitions(self, since: float) -> list[dict[str, object]]:
        with self.daemon._lock:
            return [r for t, r in self.daemon.lines if t >= since and r.get("event") == "transition"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
        image_record: object, demo_model: Path) -> Iterator[Rig]:
    d = tmp_path_factory.mktemp("abuse")
    tag = uuid.uuid4().hex[:6]
    names = {"open": f"ab{tag}-open", "keyed": f"ab{tag}-keyed"}
    key = d / "model.key"
    key.write_text("the-models-own-key\n")
    key.chmod(0o644)
    manifests = d / "manifests"
    manifests.mkdir()
    (manifests / "open.yaml").write_text(
        model_yaml(names["open"], None, demo_model, demo_model.parent.name, memory="400m"))
    (manifests / "keyed.yaml").write_text(
        model_yaml(names["keyed"], None, demo_model, demo_model.parent.name, memory="400m", api_key_file=key))
    daemon = Daemon(manifests, nofile=1024).start()
    r = Rig(manifests, daemon, names["open"], names["keyed"])
    try:
        wait_for(lambda: list(r.states(starting=True).values()) == ["RUNNING", "RUNNING"], 120,
                 "both models RUNNING")
        yield r
    finally:
        daemon.terminate()
        remove_models(docker_client, list(names.values()))


def test_slowloris_and_stalled_uploads_leave_every_model_serving(rig: Rig) -> None:
    gateway = rig.daemon.gateway
    port = int(gateway.rsplit(":", 1)[1])
    assert rig.daemon.proc is not None
    pid = rig.daemon.proc.pid
    rss0, log0, t0 = rss(pid), rig.daemon.log_bytes, time.monotonic()
    watch = Watch(gateway, pid).start()
    attack = Attack("127.0.0.1", port, Plan(idle=2000, uploads=100, seconds=20)).start()
    try:
        wait_for(lambda: attack.counters.opened >= 2000, 30, "the attack's connections opened")
        time.sleep(5)                                     # the attack holds: now use the daemon
        answer = completion(gateway, rig.open)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["text"]
        assert set(rig.states().values()) == {"RUNNING"}  # ctl status answers through it all
    finally:
        attack.stop()
        watch.stop()
    assert watch.health_s, "no /health answer at all during the attack"
    assert watch.health_failures == [], watch.health_failures[:10]
    assert watch.p99() < 1.0, f"/health p99 {watch.p99():.3f}s under attack (bench target 50 ms)"
    bad = [t for t in rig.transitions(t0) if t.get("to") != "RUNNING"]
    assert bad == [], bad
    assert rig.daemon.log_bytes - log0 < 1024 * 1024, "the attack made the daemon log over 1 MiB"
    peak = max(watch.rss or [rss0])
    assert peak - rss0 < 300 * 1024 * 1024, f"RSS grew {(peak - rss0) >> 20} MiB (was 1.7 GB before the fix)"
    assert attack.counters.closed_by_server > 0          # the gateway really did cut the stalled clients
    # after the attacker leaves, nothing is left broken
    assert completion(gateway, rig.keyed, timeout=60).status_code in (401, 403)
    assert set(rig.states().values()) == {"RUNNING"}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.example", "localhost.evil"])
def test_a_foreign_host_header_is_refused_dns_rebinding(rig: Rig, host: str) -> None:
    for method, path in (("GET", "/health"), ("GET", "/v1/models")):
        r = httpx.request(method, rig.daemon.gateway + path, headers={"Host": host}, timeout=10)
        assert r.status_code in (403, 421), (host, path, r.status_code)


def test_cross_site_posts_and_non_json_bodies_are_refused(rig: Rig) -> None:
    url = rig.daemon.gateway + "/v1/completions"
    doc = json.dumps({"model": rig.open, "prompt": "hi", "max_tokens": 1})
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        r = httpx.post(url, content=doc, headers={"Origin": origin, "Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 403, (origin, r.status_code, r.text)
    r = httpx.post(url, content=doc, headers={"Content-Type": "text/plain"}, timeout=30)   # a form can send this
    assert r.status_code == 415, r.text
    r = httpx.post(url, content=doc, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text                                                 # the real client still works


def test_deep_json_is_a_400_not_a_traceback(rig: Rig) -> None:
    since = time.monotonic()
    r = httpx.post(rig.daemon.gateway + "/v1/completions", content=b"[" * 100_000,
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"]
    with rig.daemon._lock:
        assert not any("Traceback" in json.dumps(rec) or "RecursionError" in json.dumps(rec)
                       for t, rec in rig.daemon.lines if t >= since)


@pytest.mark.parametrize("path", ["tools", "cors-proxy?url=http://127.0.0.1:1/", "slots/0?action=save",
                                  "v1/../tools"])
def test_upstream_passes_introspection_only(rig: Rig, path: str) -> None:
    for method in ("GET", "POST"):
        r = httpx.request(method, f"{rig.daemon.gateway}/upstream/{rig.open}/{path}",
                          headers={"Content-Type": "application/json"}, content=b"{}", timeout=30)
        assert r.status_code in (403, 404, 405), (method, path, r.status_code, r.text)
    assert httpx.get(f"{rig.daemon.gateway}/upstream/{rig.open}/health", timeout=30).status_code == 200


def test_a_keyed_model_is_not_reachable_without_a_key_through_the_open_gateway(rig: Rig) -> None:
    r = completion(rig.daemon.gateway, rig.keyed)
    assert r.status_code in (401, 403), r.text
    assert "key" in r.json()["error"]["message"].lower()
    ok = httpx.post(f"{rig.daemon.gateway}/v1/completions", timeout=60,
                    headers={"Authorization": "Bearer the-models-own-key"},
                    json={"model": rig.keyed, "prompt": "The capital of France is", "max_tokens": 2})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("flags", EXPLOIT_FLAGS, ids=lambda f: f[0])
def test_every_flag_that_ran_code_is_refused_with_file_and_line(rig: Rig, tmp_path: Path, flags: list[str]) -> None:
    text = (rig.dir / "open.yaml").read_text().replace(
        "server:\n", "server:\n  extra_args: " + json.dumps(flags) + "\n", 1)
    (tmp_path / "m.yaml").write_text(text)
    out = rig.ctl("validate", str(tmp_path))
    assert out.returncode != 0, out.stdout
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "extra_args" in s)
    assert f"m.yaml:{line}" in out.stdout + out.stderr, out.stdout + out.stderr
    assert "fix" in (out.stdout + out.stderr)


def test_a_manifest_edited_to_add_agent_changes_nothing_that_runs(rig: Rig, docker_client: docker.DockerClient) -> None:
    label = f"io.llama-supervisor.model={rig.open}"
    before = [c.id for c in docker_client.containers.list(filters={"label": label})]
    path = rig.dir / "open.yaml"
    good = path.read_text()
    since = time.monotonic()
    try:
        path.write_text(good.replace("server:\n", "server:\n  extra_args: [--agent]\n", 1))
        rig.daemon.wait_log(lambda r: "--agent" in json.dumps(r), 30, "the daemon refuses --agent", since=since)
        assert [c.id for c in docker_client.containers.list(filters={"label": label})] == before
        assert rig.states()[rig.open] == "RUNNING"
    finally:
        path.write_text(good)
