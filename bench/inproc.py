"""The daemon's loop wired in this process (as supervisor.cli.daemon.run wires it, minus the control
socket and signal handlers) on a DockerRuntime that records the target of every engine call, so a
manifest edit's Docker calls can be attributed to each model.

Calls that name no model (`list`, the full resync) are counted apart: they are the same whichever
models changed, and the loop makes one only on a resync or after the events stream reconnects.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker

from supervisor import paths
from supervisor.core.events import Event, SignalReceived
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import ContainerSpec
from supervisor.runtime import container_name
from supervisor.runtime.docker.runtime import DockerRuntime

ALL = "(all: list)"


class AttributingRuntime(DockerRuntime):
    """DockerRuntime that also keeps (operation, target) for each call: a container ID or a model name."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.log: list[tuple[float, str, str]] = []
        self._log_lock = threading.Lock()

    def _note(self, op: str, target: str) -> None:
        with self._log_lock:
            self.log.append((time.monotonic(), op, target))

    def list_managed(self) -> list[ObservedContainer]:
        self._note("list", ALL)
        return super().list_managed()

    def inspect(self, container_id: str) -> ObservedContainer | None:
        self._note("inspect", container_id)
        return super().inspect(container_id)

    def create(self, spec: ContainerSpec, *, beside: str = "", held: bool = False) -> str:
        self._note("create", spec.model)
        return super().create(spec, beside=beside, held=held)

    def start(self, container_id: str) -> None:
        self._note("start", container_id)
        super().start(container_id)

    def stop(self, container_id: str, *, timeout_s: float) -> None:
        self._note("stop", container_id)
        super().stop(container_id, timeout_s=timeout_s)

    def kill(self, container_id: str) -> None:
        self._note("kill", container_id)
        super().kill(container_id)

    def unpause(self, container_id: str) -> None:
        self._note("unpause", container_id)
        super().unpause(container_id)

    def remove(self, container_id: str) -> None:
        self._note("remove", container_id)
        super().remove(container_id)

    def log_tail(self, container_id: str, *, lines: int = 20) -> str:
        self._note("logs", container_id)
        return super().log_tail(container_id, lines=lines)

    def logs(self, container_id: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        self._note("logs", container_id)
        return super().logs(container_id, lines=lines, follow=follow)

    def calls_since(self, t: float) -> list[tuple[str, str]]:
        with self._log_lock:
            return [(op, target) for ts, op, target in self.log if ts >= t]


def calls_for(calls: list[tuple[str, str]], *, model: str, container_ids: set[str], instance: str) -> Counter[str]:
    """The calls among `calls` whose target is the model (by name, container name or one of its IDs)."""
    names = {model, container_name(model, instance)}
    out: Counter[str] = Counter()
    for op, target in calls:
        if target in names or any(cid.startswith(target) or target.startswith(cid) for cid in container_ids):
            out[op] += 1
    return out


class InProcessDaemon:
    def __init__(self, manifests: Path, *, instance: str) -> None:
        from supervisor.cli.daemon import make_loader
        from supervisor.runtime.docker.verifier import LockVerifier
        from supervisor.daemon.loop import LoopSettings, Supervisor
        from supervisor.daemon.watcher import ManifestWatcher
        from supervisor.daemon.health import Prober
        from supervisor.runtime.docker.events import DockerEventStream

        self.events: queue.Queue[Event] = queue.Queue()
        self.instance = instance
        self.runtime = AttributingRuntime(instance=instance)
        lock_path = paths.lock_path()
        self.prober = Prober(self.events.put)
        self.sup = Supervisor(
            events=self.events, runtime=self.runtime, verifier=LockVerifier(self.runtime.client, lock_path),
            load_desired=make_loader(manifests, lock_path, isolated=True), prober=self.prober,
            settings=LoopSettings(),
        )
        self.stream = DockerEventStream(lambda: docker.from_env(timeout=60), self.events.put, instance=instance)
        self.watcher = ManifestWatcher(manifests, self.events.put)
        self.thread = threading.Thread(target=self.sup.run, name="loop", daemon=True)

    def start(self) -> InProcessDaemon:
        self.stream.start()
        self.stream.connected.wait(5)
        self.watcher.start()
        self.thread.start()
        return self

    def close(self) -> None:
        self.sup.post(SignalReceived(signal.SIGTERM))     # leaves the containers running, as the daemon does
        self.thread.join(30)
        for c in (self.watcher, self.stream, self.prober, self.runtime):
            try:
                c.close()
            except Exception as e:  # best effort at the end of a benchmark
                print(f"close {type(c).__name__}: {e}")
