"""Hand-written fakes behind the daemon's protocols (supervisord's DummyOptions style)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace

from supervisor.control.api import (
    Command,
    CommandResult,
    ModelResult,
    Reload,
    Reread,
    RestartModels,
    Shutdown,
    StartModels,
    StopModels,
    Unload,
    Update,
)
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import ContainerSpec, DesiredModel
from supervisor.core.status import ModelStatus
from supervisor.errors import ControlError, ModelMismatch
from supervisor.runtime import container_name, successor_name


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> float:
        self.now += s
        return self.now


class FakeRuntime:
    """Containers as values in a dict; every call is recorded as (operation, argument)."""

    kind = "docker"

    def __init__(self) -> None:
        self.containers: dict[str, ObservedContainer] = {}
        self.calls: list[tuple[str, str]] = []
        self._ids = itertools.count(1)
        self._ports = itertools.count(1)
        self.fail_next: dict[str, Exception] = {}
        self.memory: dict[str, int] = {}
        self.maintained = 0
        self.closed = False
        self.one_per_model = False            # True: as the process runtime, no second container of a model
        self.announcing = False               # True: as the process runtime, its servers say when they loaded
        self.held: set[str] = set()           # models whose containers were created `held` (on-demand)
        self.prepared: list[tuple[str, int]] = []   # (container, how many calls came before) per `prepare`

    @property
    def successors(self) -> bool:
        return not self.one_per_model

    @property
    def announces_ready(self) -> bool:
        return self.announcing

    def _call(self, op: str, arg: str) -> None:
        self.calls.append((op, arg))
        if op in self.fail_next:
            raise self.fail_next.pop(op)

    def add(self, c: ObservedContainer) -> None:
        self.containers[c.id] = c

    def list_managed(self) -> list[ObservedContainer]:
        self._call("list", "")
        return list(self.containers.values())

    def inspect(self, container_id: str) -> ObservedContainer | None:
        self._call("inspect", container_id)
        return self.containers.get(container_id)

    def create(self, spec: ContainerSpec, *, beside: str = "", held: bool = False) -> str:
        self._call("create", spec.model)
        if held:
            self.held.add(spec.model)
        cid = f"id{next(self._ids)}-{spec.model}"
        name = successor_name(spec.model, beside=beside) if beside else container_name(spec.model)
        port = spec.host_port or 40000 + next(self._ports)     # host port 0: the engine picks one
        self.containers[cid] = ObservedContainer(
            id=cid, name=name, model=spec.model,
            config_hash=spec.config_hash(), status="created", image_id=spec.image_id, host_port=port)
        return cid

    def _set(self, cid: str, **kw: object) -> None:
        self.containers[cid] = replace(self.containers[cid], **kw)  # type: ignore[arg-type]

    def prepare(self, container_id: str) -> None:
        # a head start, no engine call of its own here: kept apart from `calls`, with where it came among them
        self.prepared.append((container_id, len(self.calls)))

    def start(self, container_id: str) -> None:
        self._call("start", container_id)
        self._set(container_id, status="running", exit_code=None, oom_killed=False)

    def stop(self, container_id: str, *, timeout_s: float) -> None:
        self._call("stop", container_id)
        self._set(container_id, status="exited", exit_code=0)

    def kill(self, container_id: str) -> None:
        self._call("kill", container_id)
        self._set(container_id, status="exited", exit_code=137)

    def unpause(self, container_id: str) -> None:
        self._call("unpause", container_id)
        self._set(container_id, status="running")

    def remove(self, container_id: str) -> None:
        self._call("remove", container_id)
        self.containers.pop(container_id, None)

    def log_tail(self, container_id: str, *, lines: int = 20) -> str:
        self._call("logs", container_id)
        return "line 1\nerror: out of memory\n"

    def logs(self, container_id: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        self._call("logs", container_id)
        yield b"hello\n"

    def memory_usage(self, container_id: str) -> int | None:
        return self.memory.get(container_id)       # a file read in the real runtime: not a recorded call

    def maintain(self) -> None:
        self.maintained += 1                       # upkeep, no engine call: not a recorded call

    @property
    def call_count(self) -> int:
        return len(self.calls)

    def close(self) -> None:
        self.closed = True

    # test helpers (not calls)
    def crash(self, cid: str, code: int = 139, oom: bool = False) -> None:
        self._set(cid, status="exited", exit_code=code, oom_killed=oom)

    def pause(self, cid: str) -> None:
        self._set(cid, status="paused")

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]


class FakeVerifier:
    def __init__(self) -> None:
        self.bad_models: set[str] = set()
        self.swapped_models: set[str] = set()     # the file changes between check and mount
        self.checked: list[str] = []

    def check_model(self, desired: DesiredModel) -> None:
        self.checked.append(desired.name)
        if desired.name in self.bad_models:
            raise ModelMismatch(f"model file {desired.model_path} has SHA-256 0000, the manifest pins 1111")

    def check_image(self, desired: DesiredModel) -> None:
        pass

    def check_start(self, desired: DesiredModel) -> None:
        self.check_model(desired)
        self.check_image(desired)

    def confirm_model(self, desired: DesiredModel) -> None:
        if desired.name in self.swapped_models:
            raise ModelMismatch(f"model file {desired.model_path} was replaced between its check and the mount")


class FakeProber:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.released: list[int] = []

    def submit(self, model: str, container_id: str, *, host_ip: str, port: int, timeout_s: float) -> bool:
        self.sent.append((model, container_id))
        return True

    def release(self, host_ip: str, port: int) -> None:
        self.released.append(port)


class FakeNotifier:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def ready(self) -> None: self.messages.append("READY")
    def watchdog(self) -> None: pass
    def status(self, text: str) -> None: self.messages.append(f"STATUS={text}")
    def reloading(self) -> None: self.messages.append("RELOADING")
    def stopping(self) -> None: self.messages.append("STOPPING")


class FakeController:
    """The daemon as the control server sees it: fixed statuses, scripted command results."""

    def __init__(self, models: list[ModelStatus], *, pid: int = 4242) -> None:
        self.models = {m.name: m for m in models}
        self.commands: list[Command] = []
        self.failures: dict[str, str] = {}            # name -> reason its start fails with
        self.changes: list[ModelResult] = []          # what reread/update report
        self.log_lines = [b"line 1\n", b"line 2\n", b"line 3\n"]
        self._pid = pid

    def status(self, names: tuple[str, ...] = ()) -> list[ModelStatus]:
        if not names:
            return list(self.models.values())
        return [self.models[n] for n in names if n in self.models]

    def submit(self, command: Command) -> Future[CommandResult]:
        self.commands.append(command)
        future: Future[CommandResult] = Future()
        future.set_result(self._execute(command))
        return future

    def _execute(self, command: Command) -> CommandResult:
        match command:
            case StartModels(names=names) | RestartModels(names=names) | StopModels(names=names) | Unload(names=names):
                verb = "stopped" if isinstance(command, StopModels | Unload) else "started"
                targets = tuple(self.models) if names == ("all",) else names
                unknown = tuple(n for n in targets if n not in self.models)
                results = tuple(
                    ModelResult(n, False, self.failures[n]) if n in self.failures and verb == "started"
                    else ModelResult(n, True, verb)
                    for n in targets if n in self.models
                )
                return CommandResult(ok=all(r.ok for r in results), results=results, unknown=unknown)
            case Reread() | Update() | Reload():
                return CommandResult(ok=True, results=tuple(self.changes))
            case Shutdown():
                return CommandResult(ok=True)
        raise AssertionError(command)

    def logs(self, name: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        if name not in self.models:
            raise ControlError(f"no such model: {name}")
        yield from self.log_lines[-lines:] if lines else []

    def pid(self) -> int:
        return self._pid
