"""The Runtime protocol on the docker SDK (low-level API: one HTTP call per operation).

Containers are created by image ID from a ContainerSpec, hardened (read-only root,
tmpfs /tmp, no capabilities, no-new-privileges, non-root, read-only mounts, memory,
pids and CPU-weight limits, a bridge network of their own with inter-container
traffic off), published on spec.host_ip only, with Docker's restart policy
`no`: the daemon owns restarts (CIS Docker Benchmark section 5: docs/DESIGN.md). `calls` counts engine calls per operation, for
tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions
import structlog
from docker.types import DeviceRequest, LogConfig, Mount

from supervisor.core.observed import ContainerStatus, ObservedContainer
from supervisor.core.spec import ContainerSpec
from supervisor.artifacts.engine import UNREACHABLE_HINT, engine_errors
from supervisor.errors import RetryableError, RuntimeOperationError, RuntimeUnavailable
from supervisor.runtime.docker import exitwatch
from supervisor.runtime.docker.standby import FIFO_TARGET, GATE, GATE_WAIT_S, Arming, Gates, entrypoint
from supervisor.runtime import (
    DEFAULT_INSTANCE,
    LABEL_HASH,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_MODEL,
    MAX_TAIL_BYTES,
    NAME_PREFIX,
    clean_log,
    container_name,
    owned_filter,
    successor_name,
    process_rss,
)

log = structlog.get_logger("supervisor.runtime.docker")

KILLED_WAIT_S = 10.0     # after SIGKILL, how long a stop waits for the process to be gone
SETTLE_S = 10.0          # how long the next call on a stopped container waits for the engine's teardown
SETTLE_POLL_S = 0.01
PREPARED_FOR_S = 60.0    # without --standby: how long a prepared container waits at its gate for its start

_EXITED_RE = re.compile(r"^Exited \((-?\d+)\)")
_STATUSES: frozenset[str] = frozenset({"created", "running", "paused", "restarting", "removing", "exited", "dead"})


def labels(spec: ContainerSpec, instance: str = DEFAULT_INSTANCE) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_INSTANCE: instance, LABEL_MODEL: spec.model,
            LABEL_HASH: spec.config_hash()}


def host_config_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """Everything that goes into HostConfig; pure, so the hardening is unit-tested."""
    kw: dict[str, Any] = {
        # host_port 0: a one-tuple asks the engine for a free port on host_ip (read back on inspect)
        "port_bindings": {f"{spec.container_port}/tcp": (spec.host_ip, spec.host_port) if spec.host_port
                          else (spec.host_ip,)},
        "read_only": spec.read_only_rootfs,
        "tmpfs": {"/tmp": f"rw,noexec,nosuid,size={spec.tmpfs_size}"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "mounts": [Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only)
                   for m in spec.mounts],
        "pids_limit": spec.pids_limit,
        "restart_policy": {"Name": "no"},
        "init": False,
        "cpu_shares": spec.cpu_shares,
        "network_mode": spec.network,
        # Rotated by the engine, so a chatty or hostile server cannot fill the disk; `docker logs`
        # (and so `llama-supervisorctl tail`) reads across the rotated files.
        "log_config": LogConfig(type="json-file", config={
            "max-size": str(spec.log_max_bytes), "max-file": str(spec.log_max_files)}),
    }
    if spec.memory_bytes is not None:
        kw["mem_limit"] = spec.memory_bytes
        kw["memswap_limit"] = spec.memory_bytes      # no swap beyond the memory limit
    if spec.nano_cpus is not None:
        kw["nano_cpus"] = spec.nano_cpus
    if spec.cpuset is not None:
        kw["cpuset_cpus"] = spec.cpuset
    if spec.gpu is not None:
        ids = list(spec.gpu.device_ids)
        kw["device_requests"] = [DeviceRequest(
            driver=spec.gpu.vendor, device_ids=ids or None, count=0 if ids else -1,
            capabilities=[list(spec.gpu.capabilities)],
        )]
    return kw


def container_kwargs(spec: ContainerSpec, instance: str = DEFAULT_INSTANCE, *, beside: str = "") -> dict[str, Any]:
    """Arguments of APIClient.create_container besides host_config (no environment: no secrets).
    `beside`: the name of the model's container that keeps running (start-first): the other name of the pair."""
    return {
        "image": spec.image_id,
        "command": list(spec.argv),
        "name": successor_name(spec.model, instance, beside=beside) if beside else container_name(spec.model, instance),
        "labels": labels(spec, instance),
        "ports": [(spec.container_port, "tcp")],
        "user": spec.user,
        "detach": True,
    }


def observed_from_inspect(d: dict[str, Any]) -> ObservedContainer:
    state = d.get("State") or {}
    lbl = (d.get("Config") or {}).get("Labels") or {}
    status = state.get("Status", "dead")
    return ObservedContainer(
        id=d["Id"],
        name=d.get("Name", "").lstrip("/"),
        model=lbl.get(LABEL_MODEL, ""),
        config_hash=lbl.get(LABEL_HASH, ""),
        status=status if status in _STATUSES else "dead",
        exit_code=state.get("ExitCode") if status in ("exited", "dead") else None,
        oom_killed=bool(state.get("OOMKilled")),
        started_at=state.get("StartedAt", ""),
        image_id=d.get("Image", ""),
        host_port=_bound_port(((d.get("NetworkSettings") or {}).get("Ports") or {}).values()),
    )


def _bound_port(bindings: Any) -> int | None:
    """The first published host port in inspect's NetworkSettings.Ports values."""
    for entries in bindings:
        for b in entries or ():
            if str(b.get("HostPort", "")).isdigit():
                return int(b["HostPort"])
    return None


def observed_from_list(d: dict[str, Any]) -> ObservedContainer:
    lbl = d.get("Labels") or {}
    status: ContainerStatus = d.get("State", "dead") if d.get("State") in _STATUSES else "dead"
    m = _EXITED_RE.match(d.get("Status", ""))
    names = d.get("Names") or [""]
    return ObservedContainer(
        id=d["Id"],
        name=names[0].lstrip("/"),
        model=lbl.get(LABEL_MODEL, ""),
        config_hash=lbl.get(LABEL_HASH, ""),
        status=status,
        exit_code=int(m.group(1)) if m else None,
        image_id=d.get("ImageID", ""),
        host_port=next((int(p["PublicPort"]) for p in d.get("Ports") or () if p.get("PublicPort")), None),
    )


class LogStream:
    """A followed container log. `close()` is safe from any thread and ends a blocked read at once
    (the docker SDK's CancellableStream shuts its socket down), which a generator's close() is not."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._closed = threading.Event()

    def __iter__(self) -> LogStream:
        return self

    def __next__(self) -> bytes:
        if self._closed.is_set():
            raise StopIteration
        try:
            return bytes(next(self._stream))
        except (OSError, ValueError, AttributeError, requests.exceptions.RequestException):
            if self._closed.is_set():      # the read was cut by close(): a normal end
                raise StopIteration from None
            raise

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        close = getattr(self._stream, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - the stream is going away either way; nothing to report
                pass


class DockerRuntime:
    """Runtime (supervisor.runtime) for llama-server in Docker containers; `kind` is "docker"."""

    kind = "docker"

    def __init__(self, client: docker.DockerClient | None = None, *, timeout_s: float = 60,
                 instance: str = DEFAULT_INSTANCE,
                 open_process: Callable[[int, str], int | None] = exitwatch.open_process,
                 gates: Gates | None = None, standby: int = 0) -> None:
        self.instance = instance
        # Standby containers (standby.py): `gates` holds the FIFOs of gated containers (always released after an
        # engine start, so a daemon run with --no-standby still starts the ones an earlier run armed);
        # `standby` is how many stopped gated containers stay armed at once (0: none), the last stopped kept.
        self.gates = gates
        self.standby_max = max(0, int(standby)) if gates is not None else 0
        self.standby = self.standby_max > 0
        self._gated: dict[str, str] = {}     # container ID -> its name, for containers created with the gate
        self._plain: set[str] = set()        # containers seen without it (no inspect to ask again)
        # gated containers held at their gate (to the daemon: exited), in the order they were armed
        self._armed: dict[str, None] = {}
        self._arming = Arming(self._arm)
        self.prepared_for_s = PREPARED_FOR_S
        self._open_process = open_process    # a pidfd for a container's process, None where it is hidden
        self._pids: dict[str, int] = {}      # container ID -> its process on this host (from inspect)
        try:
            self._client = client or docker.from_env(timeout=int(timeout_s))
        except docker.errors.DockerException as e:
            raise RuntimeUnavailable(f"docker engine unreachable: {e}: {UNREACHABLE_HINT}") from e
        self._api = self._client.api
        self.calls: Counter[str] = Counter()
        self._networks: set[str] = set()
        # stopped with their process gone, the engine's teardown maybe not: container ID -> that process's pid
        self._exiting: dict[str, int] = {}

    @property
    def successors(self) -> bool:
        """Containers are found by label: two of a model run side by side under a pair of names."""
        return True

    @property
    def announces_ready(self) -> bool:
        """Not read: a container's llama-server runs as a plain server and is polled (lifecycle.py)."""
        return False

    @property
    def client(self) -> docker.DockerClient:
        return self._client

    @property
    def call_count(self) -> int:
        return sum(self.calls.values())

    def _count(self, op: str) -> None:
        self.calls[op] += 1

    def list_managed(self) -> list[ObservedContainer]:
        self._count("list")
        with engine_errors("list", "containers"):
            rows = self._api.containers(all=True, filters={"label": owned_filter(self.instance)})
        return [self._as_seen(self._unless_exiting(observed_from_list(r)),
                              gated=str(r.get("Command") or "").startswith(GATE + " "))
                for r in rows]

    def _unless_exiting(self, c: ObservedContainer, state: dict[str, Any] | None = None) -> ObservedContainer:
        """A container this runtime stopped whose process is gone is stopped, though the engine says running
        until its teardown is over (about 0.1 s): a resync in that window must not take it for one left
        running (adoption) and then see it exit (a restart). Started again since (another pid): as it is."""
        stopped_pid = self._exiting.get(c.id)
        if stopped_pid is None or c.status != "running":
            return c
        if state is None:
            try:
                state = self._api.inspect_container(c.id).get("State") or {}
            except (docker.errors.APIError, requests.exceptions.RequestException):
                return c
        if not state.get("Running"):            # the teardown ended since the list: as the engine says now
            self._exiting.pop(c.id, None)
            code = state.get("ExitCode")
            return dataclasses.replace(c, status="exited", exit_code=int(code) if code is not None else None)
        if int(state.get("Pid") or 0) == stopped_pid:
            return dataclasses.replace(c, status="exited", exit_code=None)
        return c

    def _as_seen(self, c: ObservedContainer, *, gated: bool) -> ObservedContainer:
        """A gated container held at its gate is, to the daemon, a stopped one (exited 0)."""
        if not gated or self.gates is None:
            self._plain.add(c.id)
            return c
        if c.id not in self._gated:
            self._gated[c.id] = c.name
            if c.status == "running" and self.gates.waiting(c.name):    # first sight (after a restart): armed?
                self._armed[c.id] = None
        if c.id in self._armed and c.status in ("running", "restarting"):
            return dataclasses.replace(c, status="exited", exit_code=0, held=True)
        return c

    def inspect(self, container_id: str) -> ObservedContainer | None:
        self._count("inspect")
        with engine_errors("inspect", container_id[:12]):
            try:
                d = self._api.inspect_container(container_id)
            except docker.errors.NotFound:
                self._pids.pop(container_id, None)
                self._exiting.pop(container_id, None)
                return None
        state = d.get("State") or {}
        pid = state.get("Pid") or 0
        self._pids[d["Id"]] = int(pid)
        if not state.get("Running"):
            self._exiting.pop(d["Id"], None)    # its teardown is over: nothing left to wait for
        entry = (d.get("Config") or {}).get("Entrypoint") or []
        return self._as_seen(self._unless_exiting(observed_from_inspect(d), state),
                             gated=bool(entry) and entry[0] == GATE)

    def create(self, spec: ContainerSpec, *, beside: str = "", held: bool = False) -> str:
        """`held` (an on-demand model's): created with the gate, so that `prepare` can start it ahead of its
        start, and with standby arm it after its stops. An always-on model's container is a plain one."""
        self.ensure_network(spec.network)
        kw = container_kwargs(spec, self.instance, beside=beside)
        hc = host_config_kwargs(spec)
        if held and self.gates is not None:
            fifo = self.gates.make(kw["name"], spec.user)
            kw["entrypoint"] = entrypoint()
            if self.standby:
                # no Docker HEALTHCHECK: an armed container would exec it every 5 s for nothing, and show
                # (unhealthy) for a stopped model; the daemon's own probes decide, `status` shows them.
                # A container only ever prepared waits at its gate for less than one interval.
                kw["healthcheck"] = {"Test": ["NONE"]}
            hc["mounts"] = [*hc["mounts"], Mount(target=FIFO_TARGET, source=str(fifo), type="bind", read_only=True)]
        for attempt in (1, 2):
            self._count("create")
            try:
                with engine_errors("create", kw["name"]):
                    host_config = self._api.create_host_config(**hc)
                    cid = str(self._api.create_container(host_config=host_config, **kw)["Id"])
                    if "entrypoint" in kw:
                        self._gated[cid] = kw["name"]
                    return cid
            except RuntimeOperationError as e:
                cause = e.__cause__
                if attempt == 2 or not (isinstance(cause, docker.errors.APIError) and cause.status_code == 409):
                    raise
                self._clear_name(kw["name"])
        raise AssertionError("unreachable")

    def ensure_network(self, name: str) -> None:
        """The models' bridge network, made once: inter-container traffic off, so models cannot reach each other
        (public for bench/live.py, whose bare floor joins the same network)."""
        if name in self._networks:
            return
        self._count("network")
        with engine_errors("network", name):
            if not any(n.get("Name") == name for n in self._api.networks(names=[name])):
                try:
                    self._api.create_network(
                        name, driver="bridge", check_duplicate=True, labels={LABEL_MANAGED: "true"},
                        options={"com.docker.network.bridge.enable_icc": "false"},
                    )
                except docker.errors.APIError as e:
                    if e.status_code != 409:      # another daemon made it first
                        raise
        self._networks.add(name)

    def _clear_name(self, name: str) -> None:
        """A container holds our name (a half-done recreate): remove it if it is ours."""
        other = self.inspect(name)
        if other is None:
            return
        if not name.startswith(NAME_PREFIX) or not other.model:
            raise RuntimeOperationError(
                f"container name {name} is taken by a container llama-supervisor does not manage; "
                f"rename or remove it ('docker rm {name}')"
            )
        owner = self._instance_of(other.id)
        if owner != self.instance:
            raise RuntimeOperationError(
                f"container name {name} belongs to llama-supervisor instance {owner or '(none)'!r}, "
                f"not {self.instance!r}: give the model another name, or stop that daemon"
            )
        self.remove(other.id)

    def _instance_of(self, container_id: str) -> str:
        with engine_errors("inspect", container_id[:12]):
            try:
                cfg = self._api.inspect_container(container_id).get("Config") or {}
            except docker.errors.NotFound:
                return ""
        return str((cfg.get("Labels") or {}).get(LABEL_INSTANCE, ""))

    def start(self, container_id: str) -> None:
        self._count("start")
        name = self._gate_of(container_id)
        if name is None or self.gates is None:
            self._settle(container_id)
            with engine_errors("start", container_id[:12]):
                self._api.start(container_id)
            return
        with self._arming.lock(container_id):
            self._arming.cancel(container_id)
            if container_id in self._armed:
                del self._armed[container_id]
                if self.gates.release(name):
                    self._count("release")          # no engine call: the container was started beforehand
                    return
            self._settle(container_id)
            with engine_errors("start", container_id[:12]):
                self._api.start(container_id)       # a running one (its gate still waiting) answers 304: fine
            if not self.gates.release(name, wait_s=GATE_WAIT_S, alive=lambda: self._up(container_id)):
                raise RuntimeOperationError(
                    f"start {name}: its llama-gate did not wait on {self.gates.path(name)} within {GATE_WAIT_S:.0f} s "
                    f"(see 'docker logs {name}'); recreate it: 'llama-supervisorctl restart --recreate {name}'")

    def prepare(self, container_id: str) -> None:
        """A start of this stopped container comes once another model has stopped (a swap): start it up to
        its gate now, on the arming thread, so that the engine's part of the start runs beside that stop.
        llama-server is exec'd only at `start`: until then the container holds no model memory. A plain
        container (created before held ones, or by a render) is left for its start. Without --standby, one
        whose start does not come within `prepared_for_s` is stopped again."""
        if container_id not in self._gated or container_id in self._armed or self.gates is None:
            return
        self._arming.schedule(container_id, delay_s=0.0, then=self._arm_ahead)

    def _arm_ahead(self, container_id: str) -> None:
        t0 = time.monotonic()
        if self._hold(container_id):
            log.info("prepared: started up to its gate ahead of its start", container=self._gated.get(container_id),
                     took_s=round(time.monotonic() - t0, 3))
            if not self.standby:
                self._arming.schedule(container_id, delay_s=self.prepared_for_s, then=self._unprepare)

    def _unprepare(self, container_id: str) -> None:
        """A prepared container whose start did not come (its request went away): without standby a stopped
        model has no running container."""
        if self._disarm(container_id):
            log.info("prepared start not taken: stopped again", container=self._gated.get(container_id),
                     after_s=self.prepared_for_s)

    def _disarm(self, container_id: str) -> bool:
        """End an armed container's gate (SIGTERM ends a waiting gate at once): a plain stopped container
        again, whose next start is an engine start. True when this call did."""
        with self._arming.lock(container_id):
            if container_id not in self._armed:
                return False
            del self._armed[container_id]
            self._engine_stop(container_id, 5.0)
        return True

    def _gate_of(self, container_id: str) -> str | None:
        """The name of a gated container (created with llama-gate), None for a plain one. One inspect for a
        container this runtime has not seen yet, and only where gated containers were ever made here."""
        name = self._gated.get(container_id)
        if (name is None and container_id not in self._plain and self.gates is not None
                and self.gates.root.exists()):
            self.inspect(container_id)
            name = self._gated.get(container_id)
        return name

    def _up(self, container_id: str) -> bool:
        try:
            return bool((self._api.inspect_container(container_id).get("State") or {}).get("Running"))
        except (docker.errors.APIError, requests.exceptions.RequestException):
            return False

    def _arm(self, container_id: str) -> None:
        """On the arming timer's thread, ARM_DELAY_S after a stop: start the container up to its gate."""
        if self._hold(container_id):
            log.info("standby: armed", container=self._gated.get(container_id))
            self._trim(keep=container_id)

    def _trim(self, *, keep: str) -> None:
        """More armed containers than `standby_max`: the ones armed longest ago go back to plain stopped ones
        (each costs a process, the engine's shim and the port's proxy; the last stopped are the likeliest
        next)."""
        armed = list(self._armed)        # a copy: the loop's thread releases, stops and removes meanwhile
        excess = len(armed) - self.standby_max
        for cid in [c for c in armed if c != keep][:max(0, excess)]:
            if self._disarm(cid):
                log.info("standby: disarmed, over --standby-max", container=self._gated.get(cid),
                         standby_max=self.standby_max)

    def _hold(self, container_id: str) -> bool:
        """Start a gated container up to its gate (on the arming timer's thread); True when this call did."""
        name = self._gated.get(container_id)
        if name is None or self.gates is None:
            return False
        with self._arming.lock(container_id):
            self._settle(container_id)              # the stop's teardown first: until then the engine says running
            if container_id in self._armed or self._up(container_id):
                return False                        # armed already, or started again since the stop
            self._armed[container_id] = None        # from here a resync sees it stopped, as the daemon does
            try:
                self._count("arm")
                with engine_errors("start", container_id[:12]):
                    self._api.start(container_id)
                if not self.gates.waiting(name, wait_s=GATE_WAIT_S, alive=lambda: self._up(container_id)):
                    raise RuntimeOperationError(f"{name}: its llama-gate did not wait on its FIFO")
            except Exception:
                self._armed.pop(container_id, None)
                raise
        return True

    def stop(self, container_id: str, *, timeout_s: float) -> None:
        """The container's stop signal, SIGKILL after `timeout_s`. Returns once its process is gone: seen
        through a pidfd where the daemon can see the process, else by the engine's `die` event (exitwatch.py).
        The engine's teardown then runs beside what the daemon does next, and the next call on this container
        waits for it. A paused container, or one the engine cannot signal, gets the engine's own stop."""
        self._count("stop")
        self._settle(container_id)
        if self.standby and container_id in self._gated:
            with self._arming.lock(container_id):
                self._arming.cancel(container_id)
                self._armed.pop(container_id, None)
                self._stop(container_id, timeout_s)
            self._arming.schedule(container_id)
            return
        self._stop(container_id, timeout_s)

    def _stop(self, container_id: str, timeout_s: float) -> None:
        running = self._running(container_id)
        if running is None:
            self._engine_stop(container_id, timeout_s)
            return
        pid, full_id, stop_signal = running
        pidfd = self._open_process(pid, full_id)
        if pidfd is None:
            self._stop_until_die(full_id, pid, stop_signal, timeout_s)
            return
        try:
            if not self._signal(full_id, stop_signal):
                return
            if not exitwatch.gone(pidfd, timeout_s):
                self.kill(full_id)
                exitwatch.gone(pidfd, KILLED_WAIT_S)
            self._exiting[full_id] = pid
        finally:
            os.close(pidfd)

    def _engine_stop(self, container_id: str, timeout_s: float) -> None:
        try:
            with engine_errors("stop", container_id[:12]):
                self._api.stop(container_id, timeout=max(0, int(timeout_s)))
        except RuntimeOperationError:
            self.kill(container_id)     # stop failed (timeout on a wedged container): force it

    def _signal(self, container_id: str, stop_signal: str) -> bool:
        """Send the stop signal; False when the container is not running any more."""
        try:
            with engine_errors("stop", container_id[:12]):
                self._api.kill(container_id, signal=stop_signal)
        except RuntimeOperationError as e:
            if "is not running" in str(e):
                return False
            self.kill(container_id)     # the signal could not be sent: force it
        return True

    def _stop_until_die(self, container_id: str, pid: int, stop_signal: str, timeout_s: float) -> None:
        """The stop where the process is hidden from the daemon (the shipped systemd unit): signal, then read
        the engine's events from just before the signal until its `die`, SIGKILL at the timeout. The `die`
        comes before the engine's teardown (0.11 s against the stop call's 0.21 s, exitwatch.py)."""
        since = time.time()             # the engine stamps events with the host's wall clock
        if not self._signal(container_id, stop_signal):
            return
        if not self._died(container_id, since, timeout_s):
            self.kill(container_id)
            if not self._died(container_id, since, KILLED_WAIT_S):
                return                  # no `die` seen: the next call's _settle waits on the engine instead
        self._exiting[container_id] = pid

    def _died(self, container_id: str, since: float, timeout_s: float) -> bool:
        """Whether the engine reports the container's `die` between `since` and `timeout_s` from now; the
        engine ends the stream at `until`, so no read outlives the timeout."""
        self._count("events")
        until = time.time() + max(0.0, timeout_s)
        try:
            with engine_errors("events", container_id[:12]):
                stream = self._api.events(since=f"{since:.9f}", until=f"{until:.9f}", decode=True,
                                          filters={"container": [container_id], "event": ["die"]})
                try:
                    return any(raw.get("status") == "die" or raw.get("Action") == "die" for raw in stream)
                finally:
                    stream.close()
        except (RuntimeOperationError, requests.exceptions.RequestException):
            return False

    def _running(self, container_id: str) -> tuple[int, str, str] | None:
        """A running, unpaused container's pid, full ID and stop signal; None: the engine's stop decides."""
        self._count("inspect")
        with engine_errors("inspect", container_id[:12]):
            try:
                d = self._api.inspect_container(container_id)
            except docker.errors.NotFound:
                return None
        state = d.get("State") or {}
        if not state.get("Running") or state.get("Paused"):
            return None                     # stopped already, or frozen: the engine's stop handles both
        return (int(state.get("Pid") or 0), str(d.get("Id", "")),
                str((d.get("Config") or {}).get("StopSignal") or "SIGTERM"))

    def _settle(self, container_id: str) -> None:
        """After a stop that returned when the process was gone: wait until the engine's teardown is over
        (it reports the container not running, or running another process: started again by someone else),
        so that a start or a remove does not race it."""
        stopped_pid = self._exiting.get(container_id)
        if stopped_pid is None:
            return
        deadline = time.monotonic() + SETTLE_S
        try:
            while time.monotonic() < deadline:
                try:
                    state = self._api.inspect_container(container_id).get("State") or {}
                except (docker.errors.APIError, requests.exceptions.RequestException):
                    return                  # gone, or the engine unreachable: the call that follows says so
                if not state.get("Running") or int(state.get("Pid") or 0) != stopped_pid:
                    return
                time.sleep(SETTLE_POLL_S)
        finally:
            self._exiting.pop(container_id, None)

    def kill(self, container_id: str) -> None:
        self._count("kill")
        self._arming.cancel(container_id)
        self._armed.pop(container_id, None)
        try:
            with engine_errors("kill", container_id[:12]):
                self._api.kill(container_id)
        except RuntimeOperationError as e:
            if "is not running" not in str(e):
                raise

    def unpause(self, container_id: str) -> None:
        self._count("unpause")
        self._settle(container_id)
        try:
            with engine_errors("unpause", container_id[:12]):
                self._api.unpause(container_id)
        except RuntimeOperationError as e:
            if "is not paused" not in str(e):
                raise

    def remove(self, container_id: str) -> None:
        self._count("remove")
        self._arming.forget(container_id)
        self._settle(container_id)
        with engine_errors("remove", container_id[:12]):
            try:
                self._api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass
        self._armed.pop(container_id, None)
        self._plain.discard(container_id)
        name = self._gated.pop(container_id, None)
        if name is not None and self.gates is not None:
            self.gates.drop(name)

    def log_tail(self, container_id: str, *, lines: int = 20) -> str:
        self._count("logs")
        try:
            with engine_errors("logs", container_id[:12]):
                raw = self._api.logs(container_id, stdout=True, stderr=True, tail=lines)
        except RuntimeOperationError:
            return ""
        return clean_log(bytes(raw)[-MAX_TAIL_BYTES:])

    def logs(self, container_id: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        """The log's last `lines`; with follow, a LogStream that another thread may close at any time."""
        self._count("logs")
        with engine_errors("logs", container_id[:12]):
            if not follow:
                return iter((bytes(self._api.logs(container_id, stdout=True, stderr=True, tail=lines)),))
            stream = self._api.logs(container_id, stdout=True, stderr=True, tail=lines, stream=True, follow=True)
        return LogStream(stream)

    def maintain(self) -> None:
        """Nothing to do: the engine rotates container logs (the log driver's max-size)."""

    def memory_usage(self, container_id: str) -> int | None:
        """No engine call: the resident set of the container's process (the pid its last inspect gave;
        it counts the model's mapped pages, which the cgroup charges to whoever read the file first),
        else the cgroup's figure; None where neither can be read."""
        pid = self._pids.get(container_id)
        if pid:
            rss = process_rss(pid)
            if rss is not None:
                return rss
        return cgroup_memory(container_id)

    def close(self) -> None:
        self._arming.close()        # armed containers stay armed: the next daemon finds them (list_managed)
        if not self.standby:
            # ... but one only prepared (its start never came) would wait at its gate for no daemon's lease
            for cid in list(self._armed):
                del self._armed[cid]
                try:
                    self._engine_stop(cid, 5.0)
                except RetryableError as e:
                    log.warning("prepared container left at its gate", container=self._gated.get(cid), error=str(e))
        self._client.close()


# Where a container's memory figure lives: cgroup v2 (systemd or cgroupfs driver), then v1.
_CGROUP_MEMORY = (
    "/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.current",
    "/sys/fs/cgroup/docker/{id}/memory.current",
    "/sys/fs/cgroup/memory/docker/{id}/memory.usage_in_bytes",
    "/sys/fs/cgroup/memory/system.slice/docker-{id}.scope/memory.usage_in_bytes",
)


def cgroup_memory(container_id: str, templates: tuple[str, ...] = _CGROUP_MEMORY) -> int | None:
    for t in templates:
        try:
            with open(t.format(id=container_id), "rb") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            continue
    return None
