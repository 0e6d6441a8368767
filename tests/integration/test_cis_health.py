"""A container as the daemon launches it: the image's Docker-native health check, and CIS Docker Benchmark section 5.

One real container per module, created by DockerRuntime from a rendered
manifest (the daemon's own launch path, no daemon needed: nothing restarts it
behind the test's back). The section-5 checks are those of CIS Docker
Benchmark v1.6.0 that can be read from `docker inspect` / `docker top`; the
ones that cannot apply here are listed in docs/DESIGN.md ("CIS Docker
Benchmark, section 5") and the AppArmor / SELinux ones are asserted to be
absent from this host rather than skipped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from supervisor.artifacts import hardware
from supervisor.core.spec import DesiredModel
from supervisor.artifacts.lock import ImageLock, ImageRecord
from supervisor.manifest import load_dir
from supervisor.render.desired import render_all
from supervisor.render.facts import stat_sizes
from supervisor.runtime.docker.runtime import DockerRuntime

from .daemon_harness import free_port, healthy, remove_models, wait_for

pytestmark = pytest.mark.docker

START_BUDGET_S = 60          # the manifest's health.start_timeout: Docker must say healthy within it
SENSITIVE = ("/", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr")


class Launched:
    def __init__(self, desired: DesiredModel, container_id: str, port: int, started: float) -> None:
        self.desired, self.id, self.port, self.started = desired, container_id, port, started


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
             image_record: ImageRecord, demo_model: Path) -> Iterator[Launched]:
    name, port = f"cis{uuid.uuid4().hex[:6]}", free_port()
    directory = tmp_path_factory.mktemp("cis")
    (directory / f"{name}.yaml").write_text(f"""\
kind: model
name: {name}
source: {{path: {demo_model}, sha256: {demo_model.parent.name}}}
server: {{port: {port}, ctx_size: 512, threads: 1}}
health: {{start_timeout: {START_BUDGET_S}}}
resources: {{memory: 1g, pids: 128}}
""")
    manifests = load_dir(directory)
    desired, problems = render_all(manifests, ImageLock().with_record(image_record), hardware.detect(),
                                   file_sizes=stat_sizes(manifests))
    assert problems == []
    runtime = DockerRuntime(docker_client)
    try:
        cid = runtime.create(desired[name].spec)
        started = time.monotonic()
        runtime.start(cid)
        yield Launched(desired[name], cid, port, started)
    finally:
        remove_models(docker_client, [name])


def health(client: docker.DockerClient, cid: str) -> dict[str, Any]:
    return client.api.inspect_container(cid)["State"].get("Health") or {}


def test_image_health_check_is_exec_form_and_static(docker_client: docker.DockerClient,
                                                    image_record: ImageRecord) -> None:
    hc = docker_client.images.get(image_record.image_id).attrs["Config"]["Healthcheck"]
    assert hc["Test"] == ["CMD", "/usr/local/bin/llama-healthcheck", "8080"]     # CMD, not CMD-SHELL: no shell
    assert hc["StartPeriod"] >= 600 * 10**9 and hc["Retries"] == 3


def test_docker_reports_healthy_within_the_start_budget(launched: Launched,
                                                        docker_client: docker.DockerClient) -> None:
    wait_for(lambda: health(docker_client, launched.id).get("Status") == "healthy", START_BUDGET_S,
             "Docker health status healthy", step=0.2)
    elapsed = time.monotonic() - launched.started
    print(f"\ncontainer start to Docker (healthy): {elapsed:.1f} s (budget {START_BUDGET_S} s)")
    assert healthy(launched.port)
    assert health(docker_client, launched.id)["Log"][-1]["ExitCode"] == 0


def test_cis_docker_benchmark_section_5(launched: Launched, docker_client: docker.DockerClient) -> None:
    wait_for(lambda: health(docker_client, launched.id).get("Status") == "healthy", START_BUDGET_S, "healthy")
    d = docker_client.api.inspect_container(launched.id)
    hc, cfg = d["HostConfig"], d["Config"]
    security = " ".join(docker_client.info().get("SecurityOptions") or [])
    failed: list[str] = []

    def check(number: str, ok: bool, what: str) -> None:
        if not ok:
            failed.append(f"CIS 5.{number} {what}")

    if "apparmor" in security:
        check("1", bool(d.get("AppArmorProfile")), f"AppArmor profile: {d.get('AppArmorProfile')!r}")
    else:
        assert not d.get("AppArmorProfile")            # not applicable: this host has no AppArmor
    if "selinux" in security:
        check("2", any("label" in o for o in hc.get("SecurityOpt") or []), "SELinux options")
    check("3", hc.get("CapDrop") == ["ALL"] and not hc.get("CapAdd"), f"capabilities {hc.get('CapAdd')}")
    check("4", hc.get("Privileged") is False, "not privileged")
    mounts = d.get("Mounts") or []
    check("5", all(m["Source"].rstrip("/") not in SENSITIVE and not any(
        m["Source"] == s or m["Source"].startswith(s + "/") for s in SENSITIVE[1:]) for m in mounts),
        f"sensitive host directories: {[m['Source'] for m in mounts]}")
    procs = [row[-1] for row in docker_client.api.top(launched.id)["Processes"]]
    check("6", not any("sshd" in p for p in procs) and len(procs) == 1, f"processes {procs}")
    bindings = hc.get("PortBindings") or {}
    host_ports = [int(b["HostPort"]) for v in bindings.values() for b in v]
    check("7", all(p > 1024 for p in host_ports), f"privileged host ports {host_ports}")
    check("8", set(bindings) == {"8080/tcp"} and set(cfg.get("ExposedPorts") or {}) == {"8080/tcp"},
          f"ports {bindings}")
    check("9", hc.get("NetworkMode") != "host", "host network")
    check("10", hc.get("Memory", 0) > 0 and hc.get("MemorySwap") == hc.get("Memory"), "memory limit")
    check("11", hc.get("CpuShares") not in (0, 1024), f"cpu shares {hc.get('CpuShares')}")
    check("12", hc.get("ReadonlyRootfs") is True, "read-only root filesystem")
    check("13", all(b["HostIp"] not in ("", "0.0.0.0", "::") for v in bindings.values() for b in v),
          f"bound to {bindings}")
    policy = hc.get("RestartPolicy") or {}
    check("14", policy.get("Name") == "no" or (policy.get("Name") == "on-failure"
                                               and 0 < policy.get("MaximumRetryCount", 0) <= 5),
          f"restart policy {policy}")
    check("15", hc.get("PidMode") != "host", "host PID namespace")
    check("16", hc.get("IpcMode") != "host", "host IPC namespace")
    check("17", not hc.get("Devices"), f"devices {hc.get('Devices')}")
    check("18", not hc.get("Ulimits"), f"ulimits overridden {hc.get('Ulimits')}")
    check("19", all(m.get("Propagation") in ("", "rprivate", "private", None) for m in mounts), "propagation")
    check("20", hc.get("UTSMode") != "host", "host UTS namespace")
    check("21", not any("seccomp=unconfined" in o or "seccomp:unconfined" in o for o in hc.get("SecurityOpt") or [])
          and "seccomp" in security, "default seccomp profile")
    check("24", not hc.get("CgroupParent"), f"cgroup parent {hc.get('CgroupParent')}")
    check("25", "no-new-privileges:true" in (hc.get("SecurityOpt") or []), "no-new-privileges")
    check("26", (d["State"].get("Health") or {}).get("Status") == "healthy", "health checked at runtime")
    check("28", (hc.get("PidsLimit") or 0) > 0, "pids limit")
    check("29", hc.get("NetworkMode") not in ("default", "bridge")
          and "bridge" not in (d["NetworkSettings"].get("Networks") or {}), "default bridge docker0")
    check("30", hc.get("UsernsMode") != "host", "host user namespace")
    check("31", not any("docker.sock" in m["Source"] for m in mounts), "docker socket mounted")
    assert failed == []
    # the network the daemon made for its models keeps them from reaching each other
    net = docker_client.api.inspect_network(launched.desired.spec.network)
    assert net["Options"].get("com.docker.network.bridge.enable_icc") == "false"


def test_docker_reports_unhealthy_when_the_server_stops_answering(launched: Launched,
                                                                  docker_client: docker.DockerClient) -> None:
    wait_for(lambda: health(docker_client, launched.id).get("Status") == "healthy", START_BUDGET_S, "healthy")
    docker_client.api.kill(launched.id, signal="SIGSTOP")     # llama-server stops; the kernel still accepts
    try:
        # image timing: every 5 s, 3 failures in a row, each probe gives up after 3 s
        wait_for(lambda: health(docker_client, launched.id).get("Status") == "unhealthy", 60,
                 "Docker health status unhealthy", step=0.5)
        last = health(docker_client, launched.id)["Log"][-1]
        assert last["ExitCode"] == 1 and "llama-healthcheck" in last["Output"], last
    finally:
        docker_client.api.kill(launched.id, signal="SIGCONT")
    wait_for(lambda: health(docker_client, launched.id).get("Status") == "healthy", 30, "healthy again", step=0.5)
