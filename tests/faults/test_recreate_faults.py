"""An exception at each step of a recreate (stop, remove old, create, start): the next passes converge.

The real loop (supervisor.daemon.loop.Supervisor) runs in-process against the real
engine, image and model, through a hand-written Runtime wrapper that raises once
at the chosen step. Afterwards there must be exactly one container per model,
carrying the desired config hash, running; the bystander keeps its ID and StartedAt.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from structlog.testing import capture_logs

from integration.daemon_harness import free_port, model_yaml, wait_for
from supervisor import paths
from supervisor.cli.daemon import make_loader
from supervisor.core.events import Event, ManifestsChanged
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import ContainerSpec
from supervisor.runtime.docker.verifier import LockVerifier
from supervisor.daemon.loop import LoopSettings, Supervisor
from supervisor.errors import RuntimeOperationError
from supervisor.runtime import LABEL_HASH, LABEL_INSTANCE, LABEL_MODEL
from supervisor.runtime.docker.runtime import DockerRuntime

from .helpers import fault_yaml, uid, write_manifest

pytestmark = pytest.mark.docker

STEPS = ["stop", "remove", "create", "start"]


class FaultyRuntime:
    """The real DockerRuntime, except that the armed operation raises once (before reaching the engine)."""

    def __init__(self, real: DockerRuntime) -> None:
        self.real = real
        self.armed: str | None = None
        self.fired: list[str] = []

    def _maybe_fail(self, op: str, target: str) -> None:
        if self.armed == op:
            self.armed = None
            self.fired.append(op)
            raise RuntimeOperationError(f"docker {op} {target[:12]}: injected fault")

    def list_managed(self) -> list[ObservedContainer]:
        return self.real.list_managed()

    def inspect(self, container_id: str) -> ObservedContainer | None:
        return self.real.inspect(container_id)

    def create(self, spec: ContainerSpec, *, beside: str = "", held: bool = False) -> str:
        self._maybe_fail("create", spec.model)
        return self.real.create(spec, beside=beside, held=held)

    def prepare(self, container_id: str) -> None:
        self.real.prepare(container_id)

    def start(self, container_id: str) -> None:
        self._maybe_fail("start", container_id)
        self.real.start(container_id)

    def stop(self, container_id: str, *, timeout_s: float) -> None:
        self._maybe_fail("stop", container_id)
        self.real.stop(container_id, timeout_s=timeout_s)

    def kill(self, container_id: str) -> None:
        # the recreate's stop step: a container still loading (no probes here: they all are) is killed,
        # not stopped gracefully (planner.LOADING), so the fault at "stop" is armed on the kill too
        self._maybe_fail("stop", container_id)
        self.real.kill(container_id)

    def unpause(self, container_id: str) -> None:
        self.real.unpause(container_id)

    def remove(self, container_id: str) -> None:
        self._maybe_fail("remove", container_id)
        self.real.remove(container_id)

    def log_tail(self, container_id: str, *, lines: int = 20) -> str:
        return self.real.log_tail(container_id, lines=lines)

    def logs(self, container_id: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        return self.real.logs(container_id, lines=lines, follow=follow)

    kind = "docker"
    announces_ready = False

    @property
    def call_count(self) -> int:
        return self.real.call_count

    def memory_usage(self, container_id: str) -> int | None:
        return self.real.memory_usage(container_id)

    def maintain(self) -> None:
        self.real.maintain()

    def close(self) -> None:
        self.real.close()


class NoProbes:
    """Health is not what this test is about: no probes, models stay STARTING."""

    def submit(self, model: str, container_id: str, *, host_ip: str, port: int, timeout_s: float) -> bool:
        return False

    def release(self, host_ip: str, port: int) -> None:
        pass


class Rig:
    def __init__(self, directory: Path, instance: str, demo: Path) -> None:
        self.dir, self.instance, self.demo = directory, instance, demo
        self.client = docker.from_env(timeout=60)
        self.steady = uid("rsteady")
        write_manifest(directory, self.steady, model_yaml(self.steady, free_port(), demo, demo.parent.name))

    def supervisor(self) -> tuple[Supervisor, FaultyRuntime]:
        rt = FaultyRuntime(DockerRuntime(instance=self.instance))
        events: queue.Queue[Event] = queue.Queue()
        sup = Supervisor(events=events, runtime=rt, verifier=LockVerifier(rt.real.client, paths.lock_path()),
                         load_desired=make_loader(self.dir, paths.lock_path()), prober=NoProbes(),
                         settings=LoopSettings(resync_interval_s=0.5, stop_timeout_s=2))
        sup.post(ManifestsChanged(origin="test"))
        return sup, rt

    def rows(self, model: str) -> list[dict[str, Any]]:
        return self.client.api.containers(all=True, filters={
            "label": [f"{LABEL_INSTANCE}={self.instance}", f"{LABEL_MODEL}={model}"]})

    def identity(self, model: str) -> tuple[str, str]:
        [row] = self.rows(model)
        return row["Id"], self.client.api.inspect_container(row["Id"])["State"]["StartedAt"]


def drive(sup: Supervisor, until: Callable[[], bool], timeout: float, what: str) -> None:
    def step() -> bool:
        sup.iteration(block=False)
        return until()
    wait_for(step, timeout, what, step=0.05)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, image_record: object,
        demo_model: Path) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("recreate"), uid("test-recreate-"), demo_model)
    try:
        yield r
    finally:
        for row in docker_client.api.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={r.instance}"}):
            docker_client.api.remove_container(row["Id"], force=True)
        r.client.close()


@pytest.mark.parametrize("step", STEPS)
def test_fault_at_each_recreate_step_converges_to_one_container_with_the_new_hash(rig: Rig, step: str) -> None:
    victim, port = uid("rvic"), free_port()
    write_manifest(rig.dir, victim, fault_yaml(victim, port, rig.demo, rig.demo.parent.name, backoff_initial=0.2))
    sup, rt = rig.supervisor()
    drive(sup, lambda: all(len(rig.rows(m)) == 1 and rig.rows(m)[0]["State"] == "running"
                           for m in (victim, rig.steady)), 60, "both models created and running")
    steady_before = rig.identity(rig.steady)
    old_id, _ = rig.identity(victim)

    rt.armed = step
    write_manifest(rig.dir, victim, fault_yaml(victim, port, rig.demo, rig.demo.parent.name, backoff_initial=0.2,
                                               ctx=640))
    want_hash = sup._load_desired()[victim].spec.config_hash()
    sup.post(ManifestsChanged(origin="test"))

    def converged() -> bool:
        rows = rig.rows(victim)
        return (rt.fired == [step] and len(rows) == 1 and rows[0]["Labels"][LABEL_HASH] == want_hash
                and rows[0]["State"] == "running")

    with capture_logs() as logs:
        try:
            drive(sup, converged, 60, f"convergence after a fault at {step}")
            for _ in range(10):           # and it stays converged: no more recreates
                drive(sup, lambda: True, 1, "a pass")
                time.sleep(0.1)
        except AssertionError:
            print(rig.rows(victim), sup.snapshot())
            raise
    errors = [e for e in logs if e["log_level"] == "error"]
    # The injected fault is the only error: no action on a container the engine no longer has.
    assert len(errors) == 1 and "injected fault" in errors[0]["error"], errors
    rows = rig.rows(victim)
    assert len(rows) == 1 and rows[0]["Labels"][LABEL_HASH] == want_hash and rows[0]["Id"] != old_id
    assert "640" in rig.client.api.inspect_container(rows[0]["Id"])["Args"]
    assert rig.identity(rig.steady) == steady_before
    slot = sup.slots[victim]
    assert slot.container_id == rows[0]["Id"], "the lifecycle tracks the surviving container"
    (rig.dir / f"{victim}.yaml").unlink()
    sup.post(ManifestsChanged(origin="test"))
    drive(sup, lambda: rig.rows(victim) == [], 30, "victim removed with its manifest")
    rt.real.close()
