"""llama-supervisord --runtime process: the same daemon tests, with llama-server as host processes.

The binary is the static llama-server taken out of the locked image (a native
compile takes 10+ minutes on 2 cores; `build --native` is run by hand) and
recorded in a module-local lock, so the shared lock is never touched. One daemon
with two models serves the first tests in order, the last of them kills it with
-9 and checks a new daemon adopts the same pids; the refusals (a tampered binary,
a record whose pid was reused) and `--runtime auto` without Docker get a daemon
each, with one model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from supervisor.artifacts import binaries
from supervisor import paths
from supervisor.artifacts.lock import BinaryRecord, ImageLock, ImageRecord, write_lock
from supervisor.runtime.process.records import ProcessRecord, proc_info, proof
from supervisor.runtime.process.spec import host_argv, process_env

from .daemon_harness import Daemon, free_port, healthy, instance_for, model_yaml, wait_for

pytestmark = pytest.mark.docker

LOAD_TIMEOUT = 120.0
CTL = Path(sys.executable).with_name("llama-supervisorctl")


# --- fixtures and helpers --------------------------------------------------------------------

@pytest.fixture(scope="module")
def native(docker_client: docker.DockerClient, image_record: ImageRecord) -> BinaryRecord:
    """The locked image's llama-server, taken out into the state dir (refused unless its SHA-256 matches)."""
    return binaries.from_image(docker_client, image_record, progress=lambda _: None)


@pytest.fixture(scope="module")
def lock_file(tmp_path_factory: pytest.TempPathFactory, image_record: ImageRecord, native: BinaryRecord) -> Path:
    path = tmp_path_factory.mktemp("lock") / "images.lock.json"
    write_lock(path, ImageLock().with_record(image_record).with_binary(native))
    return path


def records_dir(manifests: Path) -> Path:
    return paths.state_dir() / "processes" / instance_for(manifests) / "records"


def records(manifests: Path) -> list[ProcessRecord]:
    d = records_dir(manifests)
    return [ProcessRecord.from_json(json.loads(f.read_text())) for f in sorted(d.glob("*.json"))] if d.is_dir() else []


def pid_of(manifests: Path, model: str) -> int | None:
    """The pid of the model's process when its record proves it is alive."""
    for r in records(manifests):
        if r.model == model and r.status == "running" and r.pid and proof(r) is None:
            return r.pid
    return None


def kill_all(manifests: Path) -> None:
    """Clean-up: SIGKILL every process the records prove ours, then drop the records."""
    for r in records(manifests):
        if r.pid and proof(r) is None:
            os.kill(r.pid, signal.SIGKILL)
    shutil.rmtree(records_dir(manifests).parent, ignore_errors=True)


def start_daemon(manifests: Path, lock: Path, *, runtime: str = "process", env: dict[str, str] | None = None
                 ) -> Daemon:
    return Daemon(manifests, extra=["--runtime", runtime, "--lock", str(lock)], env=env).start()


def running(d: Daemon, model: str, since: float = 0.0, timeout: float = LOAD_TIMEOUT) -> None:
    d.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == model and r.get("to") == "RUNNING",
               timeout, f"{model} RUNNING", since=since)


class Pair:
    def __init__(self, directory: Path, demo: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.dir, self.demo = directory, demo
        self.a, self.b = f"pr{tag}-a", f"pr{tag}-b"
        self.port = {self.a: free_port(), self.b: free_port()}
        for m in (self.a, self.b):
            self.write(m)

    def write(self, model: str, *, ctx: int = 512) -> None:
        tmp = self.dir / f".{model}.tmp"
        tmp.write_text(model_yaml(model, self.port[model], self.demo, self.demo.parent.name, ctx=ctx))
        tmp.rename(self.dir / f"{model}.yaml")

    def healthy(self) -> bool:
        return healthy(self.port[self.a]) and healthy(self.port[self.b])

    def pids(self) -> dict[str, int | None]:
        return {m: pid_of(self.dir, m) for m in (self.a, self.b)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, lock_file: Path, demo_model: Path
         ) -> Iterator[tuple[Pair, list[Daemon]]]:
    p = Pair(tmp_path_factory.mktemp("manifests"), demo_model)
    daemons = [start_daemon(p.dir, lock_file)]
    try:
        yield p, daemons
    finally:
        for d in daemons:
            if d.proc and d.proc.poll() is None:
                d.terminate()
        kill_all(p.dir)


def _dump(d: Daemon) -> None:
    print(d.dump())


# --- one daemon, two models ------------------------------------------------------------------

def test_two_models_become_healthy_as_confined_processes(pair: tuple[Pair, list[Daemon]]) -> None:
    p, (d,) = pair
    try:
        wait_for(p.healthy, LOAD_TIMEOUT, "both models healthy")
        for m in (p.a, p.b):
            running(d, m, timeout=10)
        _, rec = d.wait_log(lambda r: r.get("event") == "runtime", 5, "runtime logged")
    except AssertionError:
        _dump(d)
        raise
    assert rec["runtime"] == "process" and rec["why"] == "--runtime process"
    pid = p.pids()[p.a]
    assert pid is not None
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
    if os.geteuid() == 0:
        assert uid_line.split()[1:] == ["65532"] * 4                  # dropped to the unprivileged uid
    assert os.getsid(pid) == pid                                        # its own session
    assert Path(f"/proc/{pid}/cwd").resolve().parent.name == "work"     # a private working directory
    assert os.stat(f"/proc/{pid}/cwd").st_mode & 0o777 == 0o700
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--host") + 1] == b"127.0.0.1"
    assert cmdline[cmdline.index(b"--port") + 1] == str(p.port[p.a]).encode()
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert any(ln.startswith("Max core file size") and ln.split()[4] == "0" for ln in limits.splitlines())
    assert Path(f"/proc/{pid}/environ").read_bytes().count(b"\0") <= 6       # not the daemon's environment
    out = subprocess.run([str(CTL), "--socket", str(d.sockdir / "ctl.sock"), "status"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out
    assert "runtime: process" in out.stderr and p.a in out.stdout
    tail = subprocess.run([str(CTL), "--socket", str(d.sockdir / "ctl.sock"), "tail", p.a, "-n", "50"],
                          capture_output=True, text=True, timeout=30)
    assert tail.returncode == 0 and "llama" in tail.stdout.lower(), tail


def test_sigkill_is_replaced_bystander_untouched(pair: tuple[Pair, list[Daemon]]) -> None:
    p, (d,) = pair
    wait_for(p.healthy, LOAD_TIMEOUT, "both models healthy")
    before = p.pids()
    t_kill = time.monotonic()
    os.kill(before[p.a], signal.SIGKILL)  # type: ignore[arg-type]
    try:
        t_detect, rec = d.wait_log(lambda r: r.get("event") == "container exited" and r.get("model") == p.a,
                                   10, "exit detected", since=t_kill)
        running(d, p.a, since=t_kill)
        wait_for(lambda: healthy(p.port[p.a]), 10, "victim healthy")
    except AssertionError:
        _dump(d)
        raise
    print(f"\nprocess SIGKILL -> detected {1000 * (t_detect - t_kill):.0f} ms, "
          f"-> healthy {time.monotonic() - t_kill:.2f} s")
    assert rec["exit_code"] == 137                          # our child: reaped, with its exit status
    after = p.pids()
    assert after[p.b] == before[p.b]                         # the bystander: same process
    assert after[p.a] is not None and after[p.a] != before[p.a]


def test_sigstop_hung_process_is_killed_and_replaced(pair: tuple[Pair, list[Daemon]]) -> None:
    p, (d,) = pair
    wait_for(p.healthy, LOAD_TIMEOUT, "both models healthy")
    before = p.pids()
    victim = before[p.a]
    assert victim is not None
    t0 = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    try:
        wait_for(lambda: (pid := pid_of(p.dir, p.a)) is not None and pid != victim, 60, "hung process replaced")
        wait_for(lambda: healthy(p.port[p.a]), LOAD_TIMEOUT, "replacement healthy")
    except AssertionError:
        _dump(d)
        raise
    print(f"\nprocess SIGSTOP -> healthy again {time.monotonic() - t0:.2f} s")
    info = proc_info(victim)
    assert info is None or info.state == "Z"                 # the stopped process was killed
    assert p.pids()[p.b] == before[p.b]


def test_manifest_edit_recreates_only_that_process(pair: tuple[Pair, list[Daemon]]) -> None:
    p, (d,) = pair
    wait_for(p.healthy, LOAD_TIMEOUT, "both models healthy")
    before = p.pids()
    p.write(p.a, ctx=640)
    try:
        wait_for(lambda: (pid := pid_of(p.dir, p.a)) is not None and pid != before[p.a], 30, "a relaunched")
        wait_for(lambda: healthy(p.port[p.a]), LOAD_TIMEOUT, "recreated model healthy")
    except AssertionError:
        _dump(d)
        raise
    pid = p.pids()[p.a]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--ctx-size") + 1] == b"640"
    assert p.pids()[p.b] == before[p.b]
    assert len([r for r in records(p.dir) if r.model == p.a]) == 1     # the old record was removed


def test_invalid_manifest_changes_nothing(pair: tuple[Pair, list[Daemon]]) -> None:
    p, (d,) = pair
    wait_for(p.healthy, LOAD_TIMEOUT, "both models healthy")
    before = p.pids()
    t0 = time.monotonic()
    broken = p.dir / f"{p.a}.yaml"
    good = broken.read_text()
    broken.write_text(good.replace("  ctx_size:", "   ctx_size:"))
    try:
        _, rec = d.wait_log(lambda r: r.get("event", "").startswith("invalid manifest"), 10, "error logged",
                            since=t0)
        time.sleep(2)
    finally:
        broken.write_text(good)
    assert f"{p.a}.yaml:" in rec["problem"], rec
    assert p.pids() == before and p.healthy()


def test_daemon_kill9_then_restart_adopts_the_same_pids(pair: tuple[Pair, list[Daemon]], lock_file: Path) -> None:
    p, daemons = pair
    wait_for(p.healthy, LOAD_TIMEOUT, "both models healthy")
    before = p.pids()
    daemons[0].kill9()
    assert p.pids() == before                                # the processes outlive the daemon
    d2 = start_daemon(p.dir, lock_file)
    daemons.append(d2)
    try:
        for m in (p.a, p.b):
            d2.wait_log(lambda r, m=m: r.get("event") == "adopted" and r.get("model") == m, 30, f"{m} adopted")
            running(d2, m, timeout=30)
    except AssertionError:
        _dump(d2)
        raise
    assert p.pids() == before
    t_kill = time.monotonic()                                # an adopted process (not our child) dies
    os.kill(before[p.b], signal.SIGKILL)  # type: ignore[arg-type]
    try:
        _, rec = d2.wait_log(lambda r: r.get("event") == "container exited" and r.get("model") == p.b,
                             10, "adopted exit detected", since=t_kill)
        running(d2, p.b, since=t_kill)
    except AssertionError:
        _dump(d2)
        raise
    assert rec["exit_code"] is None                          # not our child: no exit status to reap
    assert d2.terminate() == 0
    assert pid_of(p.dir, p.a) == before[p.a]                 # SIGTERM leaves the models running


# --- refusals ----------------------------------------------------------------------------------

def one_model(directory: Path, demo: Path, prefix: str) -> tuple[str, int]:
    name, port = f"{prefix}{uuid.uuid4().hex[:6]}", free_port()
    (directory / f"{name}.yaml").write_text(model_yaml(name, port, demo, demo.parent.name))
    return name, port


def test_tampered_binary_is_refused_before_launch(tmp_path: Path, native: BinaryRecord, image_record: ImageRecord,
                                                 demo_model: Path) -> None:
    copy = tmp_path / "bin" / "llama-server"
    copy.parent.mkdir()
    shutil.copyfile(native.path, copy)
    with copy.open("r+b") as f:                              # one byte changed, far from the ELF header
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    copy.chmod(0o755)
    lock = tmp_path / "images.lock.json"
    write_lock(lock, ImageLock().with_record(image_record).with_binary(
        BinaryRecord(**{**native.__dict__, "path": str(copy)})))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    name, port = one_model(manifests, demo_model, "tb")
    d = start_daemon(manifests, lock)
    try:
        _, rec = d.wait_log(lambda r: r.get("event") == "verification failed; start refused", 30, "refusal")
        d.wait_log(lambda r: r.get("event") == "transition" and r.get("to") == "FATAL", 10, "FATAL")
    except AssertionError:
        _dump(d)
        raise
    finally:
        d.terminate()
        kill_all(manifests)
    assert native.sha256 in rec["error"] and str(copy) in rec["error"]
    assert not any(r.pid for r in records(manifests)) and not healthy(port)   # nothing was launched


def test_record_with_a_reused_pid_is_never_signalled_nor_adopted(
    tmp_path: Path, lock_file: Path, demo_model: Path
) -> None:
    from supervisor.artifacts import hardware
    from supervisor.render import desired as render
    from supervisor.artifacts.lock import read_lock

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    name, port = one_model(manifests, demo_model, "pr")
    lock = read_lock(lock_file)
    desired, problems = render.load_desired(manifests, lock.for_process(), hardware.detect())
    assert problems == []
    spec = desired[name].spec
    binary = next(iter(lock.binaries.values()))
    workdir = records_dir(manifests).parent / "work" / ("f" * 64)     # where the runtime puts it
    workdir.parent.mkdir(parents=True)
    workdir.parent.chmod(0o711)
    workdir.mkdir(mode=0o700)
    uid = 65532 if os.geteuid() == 0 else None
    if uid is not None:
        os.chown(workdir, uid, uid)
    stranger = subprocess.Popen(["sleep", "600"], start_new_session=True)    # alive, not ours
    try:
        info = proc_info(stranger.pid)
        assert info is not None
        # What a daemon would have written for this model, but the pid now belongs to another process.
        stale = ProcessRecord(
            id="f" * 64, model=name, config_hash=spec.config_hash(), instance=instance_for(manifests),
            image_id=spec.image_id, binary=binary.path, binary_sha256=binary.sha256,
            argv=list(host_argv(spec)), env=process_env(spec, str(workdir)), uid=uid, gid=uid, rlimits=[],
            memory_bytes=None, pids_limit=64, workdir=str(workdir), log=str(tmp_path / "l.log"), created_at="",
            status="running", pid=stranger.pid, start_time=info.start_time + 1,
        )
        records_dir(manifests).mkdir(parents=True)
        (records_dir(manifests) / f"{stale.id}.json").write_text(json.dumps(stale.__dict__))
        d = start_daemon(manifests, lock_file)
        try:
            running(d, name)
            wait_for(lambda: healthy(port), 10, "model healthy")
        except AssertionError:
            _dump(d)
            raise
        finally:
            d.terminate()
            mine = pid_of(manifests, name)
            kill_all(manifests)
        assert d.find(lambda r: r.get("event") == "adopted") is None
        assert mine is not None and mine != stranger.pid
        assert stranger.poll() is None                        # never signalled
        assert d.find(lambda r: "does not prove its pid" in r.get("event", "")) is not None
    finally:
        stranger.kill()
        stranger.wait()


def test_runtime_auto_without_docker_serves_through_processes(tmp_path: Path, lock_file: Path,
                                                             demo_model: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    name, port = one_model(manifests, demo_model, "au")
    d = start_daemon(manifests, lock_file, runtime="auto", env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    try:
        _, rec = d.wait_log(lambda r: r.get("event") == "runtime", 20, "runtime chosen")
        running(d, name)
        wait_for(lambda: healthy(port), 10, "model healthy")
    except AssertionError:
        _dump(d)
        raise
    finally:
        d.terminate()
        kill_all(manifests)
    assert rec["runtime"] == "process" and rec["why"].startswith("auto: no Docker engine"), rec



def test_gateway_starts_an_on_demand_process_on_a_port_it_picked(tmp_path: Path, lock_file: Path,
                                                                 demo_model: Path) -> None:
    """The gateway is the same over processes: an on-demand model with no port is started by a request,
    on a free loopback port the runtime picked and recorded."""
    import httpx

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    name = f"pg{uuid.uuid4().hex[:6]}"
    (manifests / f"{name}.yaml").write_text(model_yaml(name, None, demo_model, demo_model.parent.name,
                                                       serving="lifecycle: on-demand\n"))
    d = start_daemon(manifests, lock_file)
    try:
        wait_for(lambda: _gateway_state(d, name) == "STOPPED", 30, "the on-demand model listed, stopped")
        assert pid_of(manifests, name) is None
        r = httpx.post(f"{d.gateway}/v1/chat/completions", timeout=LOAD_TIMEOUT, json={
            "model": name, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi"}]})
        assert r.status_code == 200, r.text
        (rec,) = [x for x in records(manifests) if x.model == name]
        assert rec.port > 0 and rec.argv[rec.argv.index("--port") + 1] == str(rec.port)
        assert healthy(rec.port)
    except AssertionError:
        _dump(d)
        raise
    finally:
        d.terminate()
        kill_all(manifests)


def _gateway_state(d: Daemon, name: str) -> str | None:
    import httpx

    try:
        models = httpx.get(f"{d.gateway}/v1/models", timeout=5).json()["data"]
    except (httpx.HTTPError, ValueError):
        return None
    return next((m["state"] for m in models if m["id"] == name), None)


def test_an_eviction_keeps_the_kv_cache_of_a_process(tmp_path: Path, lock_file: Path, demo_model: Path) -> None:
    """Issue 17 §1 with llama-server as a host process: `--slot-save-path` is the host directory, the only one
    the server may write (owned by its uid, 0700); the evicted model's slot is saved there and restored when
    it comes back, so only the new question is processed."""
    import httpx

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    kv = Path(tempfile.mkdtemp(prefix="kv-process-"))            # under /tmp: reachable (pytest's base is 0700)
    kv.chmod(0o755)
    tag = uuid.uuid4().hex[:6]
    a, b = f"pk{tag}-a", f"pk{tag}-b"
    for m in (a, b):
        (manifests / f"{m}.yaml").write_text(model_yaml(
            m, None, demo_model, demo_model.parent.name, ctx=1024, memory="1g", start_timeout=LOAD_TIMEOUT,
            serving="lifecycle: on-demand\nidle_ttl: 600\n"))
    doc = "Notes.\n" + " ".join(f"item {i} is a {('red', 'green', 'blue')[i % 3]} box;" for i in range(60)) + "\n"

    def ask(model: str, question: str) -> int:
        r = httpx.post(f"{d.gateway}/v1/completions", timeout=2 * LOAD_TIMEOUT, trust_env=False, json={
            "model": model, "prompt": doc + question, "max_tokens": 1, "temperature": 0, "cache_prompt": True})
        assert r.status_code == 200, r.text
        return int(r.json()["timings"]["prompt_n"])

    d = Daemon(manifests, extra=["--runtime", "process", "--lock", str(lock_file), "--memory-budget", "1500m"],
               env={"LLAMA_SUPERVISOR_KV_DIR": str(kv)}).start()
    try:
        d.wait_log(lambda r: r.get("event") == "ready", 60, "daemon ready")
        full = ask(a, "Question: which colour is item 7?")
        assert full > 300
        (rec,) = [x for x in records(manifests) if x.model == a]
        slots = Path(rec.argv[rec.argv.index("--slot-save-path") + 1])
        assert slots.parent.parent.parent == kv and "--swa-full" in rec.argv
        st = os.stat(slots)
        assert st.st_mode & 0o777 == 0o700 and st.st_uid == (rec.uid if rec.uid is not None else os.geteuid())
        since = time.monotonic()
        ask(b, "Hello")                                             # budget for one: A is evicted, its slot saved
        d.wait_log(lambda r: r.get("event") == "kv cache: saved" and r.get("model") == a, LOAD_TIMEOUT,
                   "A's slot saved", since=since)
        assert [p.name for p in slots.iterdir()] == ["slot0.bin"]
        assert ask(a, "Question: which colour is item 8?") <= 0.05 * full     # only the new tokens
        d.wait_log(lambda r: r.get("event") == "kv cache: restored" and r.get("model") == a, 10, "restored",
                   since=since)
    except AssertionError:
        print(d.dump(None))
        raise
    finally:
        d.terminate()
        kill_all(manifests)
        shutil.rmtree(kv, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="servers run as uid 65532 only under a root daemon")
def test_a_kv_dir_the_servers_uid_cannot_reach_costs_only_the_cache(tmp_path: Path, lock_file: Path,
                                                                    demo_model: Path) -> None:
    """pytest's base directory is 0700: uid 65532 cannot reach a KV dir under it. The daemon keeps no cache
    (and says why) rather than fail every start on the directory check."""
    import httpx

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    name = f"pn{uuid.uuid4().hex[:6]}"
    (manifests / f"{name}.yaml").write_text(model_yaml(name, None, demo_model, demo_model.parent.name,
                                                       start_timeout=LOAD_TIMEOUT, serving="lifecycle: on-demand\n"))
    d = Daemon(manifests, extra=["--runtime", "process", "--lock", str(lock_file)],
               env={"LLAMA_SUPERVISOR_KV_DIR": str(tmp_path / "kv")}).start()
    try:
        _, rec = d.wait_log(lambda r: r.get("event") == "kv cache: not kept", 60, "the reason logged")
        assert "uid 65532" in rec["reason"] and str(tmp_path / "kv") in rec["reason"]
        d.wait_log(lambda r: r.get("event") == "ready", 60, "daemon ready")
        r = httpx.post(f"{d.gateway}/v1/completions", timeout=2 * LOAD_TIMEOUT, trust_env=False,
                       json={"model": name, "prompt": "Hello", "max_tokens": 1})
        assert r.status_code == 200, r.text
        (proc,) = [x for x in records(manifests) if x.model == name]
        assert "--slot-save-path" not in proc.argv
        out = subprocess.run([str(CTL), "--socket", str(d.sockdir / "ctl.sock"), "status", "--json", name],
                             capture_output=True, text=True, timeout=60)
        assert "uid 65532" in json.loads(out.stdout)[0]["kv_note"]
    except AssertionError:
        print(d.dump(None))
        raise
    finally:
        d.terminate()
        kill_all(manifests)


def _probes(d: Daemon, model: str) -> int:
    """/health probes the daemon has made of `model`, whatever their result (its metrics)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5, trust_env=False).text
    return sum(int(float(ln.split()[-1])) for ln in text.splitlines()
               if ln.startswith("llama_supervisor_health_probe_duration_seconds_count{") and f'model="{model}"' in ln)


def test_a_server_says_when_it_has_loaded_and_stops_gracefully_after(tmp_path: Path, lock_file: Path,
                                                                     demo_model: Path) -> None:
    """The servers run in llama.cpp's router child mode (supervisor/runtime/process/readiness.py). Their
    "ready" line has them probed at once: a start costs a probe per 0.5 s of load and one more (the 5 % rule
    polled about 57 times for a 1.5 s load). A loaded child waits for the exit command on its stdin as well
    as SIGTERM: a stop writes it, so the server exits 0 at once, not SIGKILLed at the 10 s stop timeout;
    and a daemon that adopted the server (kill -9 of the one that launched it) writes it too."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    name, port = one_model(manifests, demo_model, "rd")
    ctl = lambda d, *a: subprocess.run([str(CTL), "--socket", str(d.sockdir / "ctl.sock"), *a],  # noqa: E731
                                       capture_output=True, text=True, timeout=60)
    is_model = lambda r: r.get("model") == name  # noqa: E731
    d = start_daemon(manifests, lock_file)
    d2: Daemon | None = None
    try:
        t_start, _ = d.wait_log(lambda r: r.get("event") == "transition" and is_model(r) and r.get("to") == "STARTING",
                                30, "starting")
        t_run, _ = d.wait_log(lambda r: r.get("event") == "transition" and is_model(r) and r.get("to") == "RUNNING",
                              LOAD_TIMEOUT, "running")
        probes = _probes(d, name)
        said = d.index(lambda r: r.get("event") == "server says it has loaded" and is_model(r))
        became = d.index(lambda r: r.get("event") == "transition" and is_model(r) and r.get("to") == "RUNNING")
        assert said is not None and became is not None and said < became, "its word, then the probe's 200"
        pid = pid_of(manifests, name)
        assert pid is not None
        assert b"LLAMA_SERVER_ROUTER_PORT=0" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")

        d.kill9()                                          # the launching daemon is gone: a new one adopts it
        d2 = start_daemon(manifests, lock_file)
        d2.wait_log(lambda r: r.get("event") == "adopted" and is_model(r), 30, "adopted")
        running(d2, name, timeout=30)
        since = time.monotonic()
        assert (out := ctl(d2, "stop", name)).returncode == 0, out
        t_adopted_stopped, _ = d2.wait_log(lambda r: r.get("event") == "transition" and is_model(r)
                                           and r.get("to") == "STOPPED", 30, "adopted stopped", since=since)
        adopted_stop_s = t_adopted_stopped - since
        assert pid_of(manifests, name) is None

        assert (out := ctl(d2, "start", name)).returncode == 0, out      # launched by this daemon
        running(d2, name, since=since)
        since = time.monotonic()
        assert (out := ctl(d2, "stop", name)).returncode == 0, out
        t_stopped, _ = d2.wait_log(lambda r: r.get("event") == "transition" and is_model(r)
                                   and r.get("to") == "STOPPED", 30, "stopped", since=since)
        (rec,) = [x for x in records(manifests) if x.model == name]
    except AssertionError:
        _dump(d2 or d)
        raise
    finally:
        for daemon in (d, d2):
            if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
                daemon.terminate()
        kill_all(manifests)
    load_s = t_run - t_start
    assert probes <= load_s / 0.5 + 3, (probes, load_s)
    assert adopted_stop_s < 5.0, adopted_stop_s                      # told through its stdin FIFO
    assert rec.status == "exited" and rec.exit_code == 0, rec        # its own clean exit, not SIGKILL (137)
    assert t_stopped - since < 5.0, t_stopped - since
    assert d2.find(lambda r: r.get("event") == "graceful stop timed out; killing") is None
