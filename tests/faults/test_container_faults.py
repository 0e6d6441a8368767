"""Faults injected into a running llama-supervisord's containers and inputs, on the real engine.

Every test adds its own model beside the package's healthy bystander (conftest.py),
injects one fault, asserts the recovery or the refusal, and asserts that the
bystander's container kept its ID and StartedAt.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from integration.daemon_harness import (
    DAEMON, Daemon, container, healthy, identity, remove_models, wait_for,
)

from .conftest import LOAD_TIMEOUT, Shared
from .helpers import fault_yaml, new_port, status, status_in, uid, write_manifest

pytestmark = pytest.mark.docker


def transition(d: Daemon, model: str, to: str, since: float = 0.0, timeout: float = LOAD_TIMEOUT) -> dict[str, Any]:
    try:
        return d.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == model and r.get("to") == to,
                          timeout, f"{model} -> {to}", since=since)[1]
    except AssertionError:
        print(d.dump())
        raise


def containers_of(client: docker.DockerClient, model: str) -> list[Any]:
    """One list call (the SDK's high-level list inspects each, racing the daemon's removals)."""
    rows = client.api.containers(all=True, filters={"label": f"io.llama-supervisor.model={model}"})
    return [client.containers.get(r["Id"]) for r in rows]


@pytest.fixture
def victim(shared: Shared, docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Names the test adds; afterwards their manifests are removed and the daemon removes their containers."""
    names: list[str] = []
    yield names
    for n in names:
        (shared.dir / f"{n}.yaml").unlink(missing_ok=True)
    try:
        wait_for(lambda: not any(docker_client.api.containers(
            all=True, filters={"label": f"io.llama-supervisor.model={n}"}) for n in names), 30, "victims removed")
    finally:
        remove_models(docker_client, names)


@pytest.fixture
def untouched(shared: Shared, docker_client: docker.DockerClient) -> Iterator[None]:
    before = identity(docker_client, shared.steady)
    yield
    assert identity(docker_client, shared.steady) == before, "the bystander's container was touched"
    assert healthy(shared.steady_port)


def test_container_is_hardened_and_api_key_guards_v1_but_not_health(
    shared: Shared, docker_client: docker.DockerClient, victim: list[str], untouched: None, tmp_path: Path
) -> None:
    name, port = uid("fhard"), new_port()
    victim.append(name)
    key = tmp_path / "api.key"
    key.write_text("s3cret-key\n")
    key.chmod(0o644)
    write_manifest(shared.dir, name, fault_yaml(name, port, shared.demo, shared.sha, api_key_file=key))
    wait_for(lambda: healthy(port), LOAD_TIMEOUT, f"{name} healthy")

    attrs = container(docker_client, name).attrs
    hc = attrs["HostConfig"]
    assert hc["ReadonlyRootfs"] is True
    assert hc["CapDrop"] == ["ALL"] and not hc.get("CapAdd")
    assert any(o.startswith("no-new-privileges") for o in hc["SecurityOpt"])
    assert attrs["Config"]["User"] == "65532:65532"
    assert hc["RestartPolicy"]["Name"] == "no"
    assert hc["Memory"] == 1 << 30 and hc["MemorySwap"] == 1 << 30
    assert hc["PidsLimit"] == 128
    assert not hc["Privileged"]
    assert [b["HostIp"] for b in hc["PortBindings"]["8080/tcp"]] == ["127.0.0.1"]
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    model_mounts = [m for m in mounts.values() if m["Source"] == str(shared.demo) or m["Source"] == str(shared.demo.parent)]
    assert model_mounts and all(m["RW"] is False for m in model_mounts), mounts
    key_mounts = [m for m in mounts.values() if m["Source"] == str(key)]
    assert key_mounts and key_mounts[0]["RW"] is False, mounts
    assert not any("s3cret" in e for e in attrs["Config"].get("Env") or []), "the key leaked into the environment"

    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/v1/models", timeout=5).status_code == 401
    assert httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    assert httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer s3cret-key"}, timeout=5).status_code == 200
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200


def test_kills_soon_after_start_back_off_then_fatal_and_stay_down(
    shared: Shared, docker_client: docker.DockerClient, victim: list[str], untouched: None
) -> None:
    d = shared.daemon
    name, port = uid("fkill"), new_port()
    victim.append(name)
    t0 = time.monotonic()
    write_manifest(shared.dir, name, fault_yaml(name, port, shared.demo, shared.sha, max_failures=2,
                                                backoff_initial=0.5))
    transition(d, name, "RUNNING", since=t0)
    cid, _ = identity(docker_client, name)
    t1 = time.monotonic()
    docker_client.api.kill(cid, signal="SIGKILL")       # within stable_after (10 s) of healthy: a failure
    rec = transition(d, name, "BACKOFF", since=t1, timeout=10)
    assert "exited with code 137" in rec["reason"] and "retry in" in rec["reason"], rec
    transition(d, name, "RUNNING", since=t1)
    cid2, started2 = identity(docker_client, name)
    assert cid2 == cid, "an unchanged config is started again in place"
    t2 = time.monotonic()
    docker_client.api.kill(cid2, signal="SIGKILL")
    rec = transition(d, name, "FATAL", since=t2, timeout=10)
    assert "2 consecutive failures" in rec["reason"], rec
    st = status_in(d, name, "FATAL")
    assert "137" in st.reason, st
    # FATAL stays down: no start, no new container. FATAL has no timer (the lifecycle's unit tests),
    # so what is left to check here is a resync with the engine: wait for one whole pass, then a
    # control round trip proves the loop is alive and has handled everything queued before it.
    d.await_resyncs(1)
    assert status(d, name) is not None
    assert [c.id for c in containers_of(docker_client, name)] == [cid2]
    assert identity(docker_client, name)[1] == started2
    assert docker_client.containers.get(cid2).status == "exited"
    assert not d.find(lambda r: r.get("model") == name and r.get("to") == "STARTING", since=t2)


def test_pause_soon_after_start_counts_toward_backoff_and_is_restarted_healthy(
    shared: Shared, docker_client: docker.DockerClient, victim: list[str], untouched: None
) -> None:
    d = shared.daemon
    name, port = uid("fpause"), new_port()
    victim.append(name)
    t0 = time.monotonic()
    write_manifest(shared.dir, name, fault_yaml(name, port, shared.demo, shared.sha, max_failures=3,
                                                backoff_initial=0.5))
    transition(d, name, "RUNNING", since=t0)
    cid, started = identity(docker_client, name)
    t1 = time.monotonic()
    docker_client.api.pause(cid)                      # hung within stable_after of healthy: a failure
    rec = transition(d, name, "BACKOFF", since=t1, timeout=10)
    assert "paused" in rec["reason"] and "retry in" in rec["reason"], rec
    transition(d, name, "RUNNING", since=t1)
    wait_for(lambda: healthy(port), 10, f"{name} healthy again")
    print(f"\npause soon after start -> healthy again {time.monotonic() - t1:.2f} s")
    st = status_in(d, name, "RUNNING")
    assert st.restarts == 1, st
    new_id, new_started = identity(docker_client, name)
    assert new_started != started and docker_client.containers.get(new_id).status == "running"
    assert len(containers_of(docker_client, name)) == 1


def test_oom_killed_is_reported_counted_and_fatal_without_a_loop(
    shared: Shared, docker_client: docker.DockerClient, victim: list[str], untouched: None
) -> None:
    d = shared.daemon
    name, port = uid("foom"), new_port()
    victim.append(name)
    t0 = time.monotonic()
    write_manifest(shared.dir, name, fault_yaml(name, port, shared.demo, shared.sha, memory="40m",
                                                max_failures=3, backoff_initial=0.2))
    first = transition(d, name, "BACKOFF", since=t0, timeout=30)
    assert "OOMKilled" in first["reason"], first
    fatal = transition(d, name, "FATAL", since=t0, timeout=30)
    t_fatal = time.monotonic()
    print(f"\nOOM: manifest written -> FATAL in {t_fatal - t0:.2f} s")
    assert "OOMKilled" in fatal["reason"] and "3 consecutive failures" in fatal["reason"], fatal
    backoffs = [r for _, r in d.lines if r.get("model") == name and r.get("to") == "BACKOFF"]
    assert len(backoffs) == 2, backoffs
    st = status_in(d, name, "FATAL")
    assert "OOMKilled" in st.reason, st
    [c] = containers_of(docker_client, name)
    assert c.attrs["State"]["OOMKilled"] is True
    started = c.attrs["State"]["StartedAt"]
    d.await_resyncs(1)                                     # one resync pass while FATAL (see above)
    assert status(d, name) is not None                     # the loop answers: not stuck, just idle
    [c2] = containers_of(docker_client, name)
    assert (c2.id, c2.attrs["State"]["StartedAt"], c2.status) == (c.id, started, "exited"), "restarted after FATAL"


def test_port_taken_by_another_process_is_a_clear_error_for_that_model_only(
    shared: Shared, docker_client: docker.DockerClient, victim: list[str], untouched: None
) -> None:
    d = shared.daemon
    name, port = uid("fport"), new_port()
    victim.append(name)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        t0 = time.monotonic()
        write_manifest(shared.dir, name, fault_yaml(name, port, shared.demo, shared.sha, max_failures=2,
                                                    backoff_initial=0.2))
        rec = transition(d, name, "FATAL", since=t0, timeout=30)
        # (a status asked the moment the log line arrives can be one pass old: CI saw the BACKOFF before it)
        st = status_in(d, name, "FATAL")
        for text in (rec["reason"], st.reason):
            assert str(port) in text and ("address already in use" in text or "already allocated" in text), text
        starts = [r for _, r in d.lines if r.get("model") == name and r.get("to") == "STARTING"]
        assert len(starts) == 2, starts                   # max_failures attempts, then no more
        time.sleep(2)
        assert len([r for _, r in d.lines if r.get("model") == name and r.get("to") == "STARTING"]) == 2


def _not_gguf(tmp: Path) -> tuple[Path, str]:
    p = tmp / "fake.gguf"
    p.write_bytes(b"NOTGGUF!" + os.urandom(4096))
    p.chmod(0o644)
    return p, hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("fault", ["missing", "wrong_sha256", "not_gguf"])
def test_bad_model_file_is_refused_before_any_container_is_created(
    shared: Shared, docker_client: docker.DockerClient, victim: list[str], untouched: None, tmp_path: Path,
    fault: str,
) -> None:
    d = shared.daemon
    name, port = uid("fbad"), new_port()
    victim.append(name)
    if fault == "missing":
        path, sha, expect = tmp_path / "absent.gguf", shared.sha, "missing"
    elif fault == "wrong_sha256":
        path, sha, expect = shared.demo, "deadbeef" * 8, "SHA-256"
    else:
        path, sha = _not_gguf(tmp_path)
        expect = "GGUF"
    t0 = time.monotonic()
    write_manifest(shared.dir, name, fault_yaml(name, port, path, sha, max_failures=3, backoff_initial=0.2))
    rec = transition(d, name, "FATAL", since=t0, timeout=30)
    assert "verification failed" in rec["reason"] and expect in rec["reason"], rec
    st = status_in(d, name, "FATAL")
    assert expect in st.reason, st
    time.sleep(2)
    assert containers_of(docker_client, name) == []
    assert not d.find(lambda r: r.get("event") == "created" and r.get("model") == name)
    assert len([r for _, r in d.lines if r.get("model") == name and r.get("to") == "STARTING"]) == 1


def test_control_socket_is_0660_and_a_second_daemon_is_refused_naming_the_first(
    shared: Shared, tmp_path: Path, untouched: None
) -> None:
    d = shared.daemon
    assert d.proc is not None
    sock = d.sockdir / "ctl.sock"
    mode = stat.S_IMODE(os.stat(sock).st_mode)
    assert mode == 0o660, oct(mode)
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    empty = tmp_path / "other"
    empty.mkdir()
    second = subprocess.run(
        [str(DAEMON), "--manifests", str(empty),
         "--socket", str(sock), "--log-format", "json", "--instance", uid("second"), "--no-gateway"],
        capture_output=True, text=True, timeout=30,
    )
    out = second.stdout + second.stderr
    assert second.returncode != 0, out
    assert str(d.proc.pid) in out, out
    print(f"\nsecond daemon: exit {second.returncode}: {out.strip().splitlines()[-1]}")
    assert d.proc.poll() is None
    assert status(d, shared.steady) is not None           # the first daemon still answers on its socket


def test_daemon_kill9_restart_adopts_healthy_and_restarts_only_the_dead(
    shared: Shared, docker_client: docker.DockerClient, victim: list[str]
) -> None:
    name, port = uid("fk9"), new_port()
    victim.append(name)
    write_manifest(shared.dir, name, fault_yaml(name, port, shared.demo, shared.sha))
    wait_for(lambda: healthy(port), LOAD_TIMEOUT, f"{name} healthy")
    steady_before = identity(docker_client, shared.steady)
    victim_id, victim_started = identity(docker_client, name)
    shared.daemon.kill9()
    docker_client.api.kill(victim_id, signal="SIGKILL")     # dies while nobody watches
    t0 = time.monotonic()
    shared.daemon = d2 = Daemon(shared.dir).start()
    d2.wait_log(lambda r: r.get("event") == "adopted" and r.get("model") == shared.steady, 30, "bystander adopted")
    transition(d2, shared.steady, "RUNNING", timeout=30)
    transition(d2, name, "RUNNING")
    wait_for(lambda: healthy(port), 10, f"{name} healthy again")
    print(f"\nkill -9 daemon + dead model -> model healthy again {time.monotonic() - t0:.2f} s after restart")
    assert identity(docker_client, shared.steady) == steady_before
    assert identity(docker_client, name)[1] != victim_started
    assert not d2.find(lambda r: r.get("model") == shared.steady and r.get("event") in ("created", "start in place",
                                                                                        "stop", "recreate"))
