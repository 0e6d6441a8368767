"""Issue 17 §1 on the real engine, image and demo model: a KV cache kept across stops. One daemon, budget for
one of its on-demand models; `timings.prompt_n` in the completion proves the reuse (a ~400-token shared prefix
processed again, or only the new question's tokens)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from supervisor import paths
from supervisor.artifacts import gguf

from .daemon_harness import Daemon, container, instance_for, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker

CTL = str(Path(sys.executable).with_name("llama-supervisorctl"))
PREFIX = "Notes for the meeting.\n" + " ".join(f"item {i} is a {('red', 'green', 'blue')[i % 3]} box;"
                                               for i in range(60)) + "\n"
USER = "65532:65532"                                        # the containers' uid:gid
SERVING = "lifecycle: on-demand\nidle_ttl: {ttl}\n"
START_S = 120        # health.start_timeout: a start's time is not the point here, and a loaded CI machine is slow
WAIT_S = 200         # a state or log line that follows a start (or two), with room to spare


@dataclass
class Rig:
    dir: Path
    kv: Path
    daemon: Daemon
    names: dict[str, str]
    demo: Path

    def write(self, key: str, ttl: float = 600, extra: str = "", ctx: int = 1024) -> None:
        (self.dir / "m" / f"{self.names[key]}.yaml").write_text(
            model_yaml(self.names[key], None, self.demo, self.demo.parent.name, ctx=ctx, memory="1g",
                       serving=SERVING.format(ttl=ttl), start_timeout=START_S) + extra)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CTL, "--socket", str(self.daemon.sockdir / "ctl.sock"), *args],
                              capture_output=True, text=True, timeout=2 * WAIT_S)

    def status(self, key: str) -> dict[str, object]:
        rows = json.loads(self.ctl("status", "--json", self.names[key]).stdout or "[]")
        return rows[0]  # type: ignore[no-any-return]

    def ask(self, key: str, question: str, prefix: str = PREFIX) -> int:
        """Ask through the gateway; llama-server's count of prompt tokens it processed."""
        r = httpx.post(f"{self.daemon.gateway}/v1/completions", timeout=2 * WAIT_S, trust_env=False,
                       json={"model": self.names[key], "prompt": prefix + question, "max_tokens": 1,
                             "temperature": 0, "cache_prompt": True})
        assert r.status_code == 200, r.text
        return int(r.json()["timings"]["prompt_n"])

    def wait_state(self, key: str, state: str, timeout: float = WAIT_S) -> None:
        wait_for(lambda: self.status(key)["state"] == state, timeout, f"{key} {state}", step=0.2)

    def files(self, key: str) -> list[Path]:
        return sorted((self.kv / self.names[key]).glob("*/slots/*"))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
        image_record: object, demo_model: Path) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("kv")
    (base / "m").mkdir()
    tag = base.name.replace("_", "")[-6:]
    names = {k: f"kv{tag}-{k}" for k in ("a", "b", "idle", "tiny")}
    kv = base / "kv"
    r = Rig(base, kv, None, names, demo_model)  # type: ignore[arg-type]
    r.write("a")
    r.write("b")
    r.write("idle", ttl=3)
    r.write("tiny", extra="kv_cache:\n  max_size: 4m\n")      # smaller than one save: the bound evicts it
    d = r.daemon = Daemon(base / "m", extra=["--memory-budget", "1500m"],
                          env={"LLAMA_SUPERVISOR_KV_DIR": str(kv)}).start()
    try:
        d.wait_log(lambda rec: rec.get("event") == "ready", 60, "daemon ready")
        yield r
    finally:
        (base / "daemon.log").write_text(d.dump(None))         # kept in pytest's base temp for a look after a failure
        print(d.dump(400))                                    # pytest shows it when the last test failed
        if d.proc and d.proc.poll() is None:
            d.terminate()
        remove_models(docker_client, list(names.values()))
        paths.state_dir().joinpath(f"models.{instance_for(base / 'm')}.state.json").unlink(missing_ok=True)


def test_an_eviction_keeps_the_cache_and_the_model_comes_back_warm(rig: Rig, docker_client: docker.DockerClient,
                                                                    demo_model: Path) -> None:
    facts = gguf.facts(demo_model)
    assert facts is not None and facts.sliding_window > 0   # gemma3.attention.sliding_window: 512
    full = rig.ask("a", "Question: which colour is item 7?")
    assert full > 300                                       # a fresh prefix: each test's starts with its own line
    attrs = container(docker_client, rig.names["a"]).attrs
    argv = attrs["Config"]["Cmd"]
    assert "--swa-full" in argv and argv[argv.index("--slot-save-path") + 1] == "/kv"
    [rw] = [m for m in attrs["Mounts"] if m["RW"]]                # the hardening stays: only the slots are writable
    assert rw["Destination"] == "/kv" and attrs["HostConfig"]["ReadonlyRootfs"] and attrs["Config"]["User"] == USER
    st = os.stat(rw["Source"])
    assert st.st_mode & 0o777 == 0o700 and f"{st.st_uid}:{st.st_gid}" == USER      # (a root daemon: Docker's)
    rig.ask("b", "Hello")                                   # one model at a time: A is evicted (and saved)
    rig.wait_state("a", "STOPPED")
    assert len(rig.files("a")) == 1
    st = rig.status("a")
    assert st["kv_tokens"] and st["kv_tokens"] >= full and st["kv_bytes"] and "kept" in str(st["kv_note"])
    since = time.monotonic()
    assert rig.ask("a", "Question: which colour is item 8?") <= 0.05 * full     # only the new tokens
    a = rig.names["a"]
    restored = rig.daemon.index(lambda rec: rec.get("event") == "kv cache: restored" and rec.get("model") == a, since)
    running = rig.daemon.index(lambda rec: rec.get("event") == "transition" and rec.get("model") == a
                               and rec.get("to") == "RUNNING", since)
    assert restored is not None and running is not None and restored < running, "restored before the gateway routes"


def test_an_idle_stop_keeps_the_cache(rig: Rig) -> None:
    full = rig.ask("idle", "Question: which colour is item 3?")
    assert full > 300
    rig.wait_state("idle", "STOPPED")                       # idle_ttl 3 s
    assert rig.ask("idle", "Question: which colour is item 4?") <= 0.05 * full


def test_restart_keeps_the_cache(rig: Rig) -> None:
    full = rig.ask("a", "Question: which colour is item 9?", prefix="Restart.\n" + PREFIX)
    assert full > 300
    assert rig.ctl("restart", rig.names["a"]).returncode == 0
    rig.wait_state("a", "RUNNING")
    assert rig.ask("a", "Question: which colour is item 10?", prefix="Restart.\n" + PREFIX) <= 0.05 * full


def test_a_corrupt_file_is_removed_and_the_model_served_cold(rig: Rig) -> None:
    full = rig.ask("a", "Question: which colour is item 11?", prefix="Corrupt.\n" + PREFIX)
    assert full > 300
    assert rig.ctl("stop", rig.names["a"]).returncode == 0
    rig.wait_state("a", "STOPPED")
    [f] = rig.files("a")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF                              # one flipped byte in the middle
    f.write_bytes(bytes(data))
    since = time.monotonic()
    cold = rig.ask("a", "Question: which colour is item 12?", prefix="Corrupt.\n" + PREFIX)
    assert cold >= full - 5                                   # the whole prefix again
    _, rec = rig.daemon.wait_log(lambda rec: rec.get("event") == "kv cache: not restored; served cold", WAIT_S,
                                 "the reason logged", since=since)
    assert "corrupt" in rec["reason"]
    assert not f.exists()


def test_a_config_change_does_not_restore_the_old_cache(rig: Rig) -> None:
    full = rig.ask("a", "Question: which colour is item 13?", prefix="Config.\n" + PREFIX)
    assert full > 300
    rig.ask("b", "Hello")                                     # A evicted: its cache saved under its config
    rig.wait_state("a", "STOPPED")
    rig.write("a", ctx=1280)
    since = time.monotonic()
    assert rig.ctl("update").returncode == 0
    assert rig.ask("a", "Question: which colour is item 14?", prefix="Config.\n" + PREFIX) >= full - 5
    assert rig.daemon.find(lambda rec: rec.get("event", "").startswith("kv cache: restore")
                           and rec.get("model") == rig.names["a"], since) is None
    assert len(list((rig.kv / rig.names["a"]).iterdir())) == 2      # the old config's directory, and the new one


def test_the_size_bound_evicts(rig: Rig) -> None:
    rig.ask("tiny", "Question: which colour is item 15?")
    since = time.monotonic()
    assert rig.ctl("stop", rig.names["tiny"]).returncode == 0
    rig.daemon.wait_log(lambda rec: rec.get("event") == "kv cache: evicted" and rec.get("model") == rig.names["tiny"],
                        WAIT_S, "the file evicted", since=since)
    assert rig.files("tiny") == []
    assert rig.status("tiny")["kv_bytes"] == 0
