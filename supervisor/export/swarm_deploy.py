"""Swarm as a runtime target on the local engine: deploy the rendered stack, read its state, remove it.

Deploying goes through `docker stack deploy` (the docker CLI), so what runs is
exactly the stack file a user would deploy by hand. A stack whose images are
all digest-pinned in a registry (`push`) is deployed with `--resolve-image
always`, so the manager checks them there; otherwise `--resolve-image never`
keeps it from asking a registry for a digest a local-only image does not have. The engine updates only the services whose spec changed (the config
hash is in the spec, so an unchanged model's tasks keep running). State comes
from the docker SDK: services of the stack and their tasks. A task with a
health check is `running` only once it is healthy, so running means serving.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import yaml
import docker.errors

from supervisor.errors import RuntimeOperationError, RuntimeUnavailable
from supervisor.export.common import LABEL_HASH, LABEL_MODEL

STACK_LABEL = "com.docker.stack.namespace"
DEFAULT_STACK = "llama"


@dataclass(frozen=True)
class ServiceState:
    model: str
    service: str                     # <stack>_<model>
    config_hash: str
    desired: int                     # replicas wanted
    running: int                     # tasks running (healthy, when the image has a health check)
    task_states: tuple[str, ...]     # current states of the tasks swarm still tracks, newest first
    error: str                       # the newest task's error, if any
    update: str = ""                 # the service's UpdateStatus.State: updating, completed, rollback_*...

    @property
    def converged(self) -> bool:
        """Every replica running and no update or rollback under way."""
        settled = self.update in ("", "completed", "rollback_completed")
        return settled and self.running >= self.desired > 0


def swarm_state(client: docker.DockerClient) -> str:
    """'active', 'inactive', 'pending', 'error' or 'locked', as `docker info` says."""
    try:
        info = client.info()
    except docker.errors.DockerException as e:
        raise RuntimeUnavailable(f"docker info: engine unreachable ({e})") from e
    return str((info.get("Swarm") or {}).get("LocalNodeState", "inactive"))


def require_swarm(client: docker.DockerClient) -> None:
    state = swarm_state(client)
    if state != "active":
        raise RuntimeOperationError(
            f"this Docker engine is not a swarm manager (swarm state: {state}): run 'docker swarm init'"
            " (one node is enough), or deploy the stack file on a manager"
        )


def node_count(client: docker.DockerClient) -> int:
    """Nodes of the swarm this engine manages (render's start-first rule needs two)."""
    try:
        return max(1, len(client.api.nodes()))
    except docker.errors.DockerException as e:
        raise RuntimeOperationError(f"docker node ls: {e}") from e


Resolve = Literal["always", "never"]


def resolve_mode(stack_text: str) -> Resolve:
    """'always' when every service's image is a digest reference (pushed to a registry), else 'never'."""
    services = (yaml.safe_load(stack_text) or {}).get("services") or {}
    refs = [str((svc or {}).get("image", "")) for svc in services.values()]
    return "always" if refs and all("@sha256:" in ref for ref in refs) else "never"


def deploy(stack_file: Path, stack: str = DEFAULT_STACK, *, docker_cli: str = "docker",
           resolve: Resolve = "never") -> str:
    """`docker stack deploy` the file; returns what the CLI printed."""
    argv = [docker_cli, "stack", "deploy", "--resolve-image", resolve, "--prune", "-c", str(stack_file), stack]
    return _run(argv, f"deploy stack {stack}")


def remove(stack: str = DEFAULT_STACK, *, docker_cli: str = "docker") -> str:
    return _run([docker_cli, "stack", "rm", stack], f"remove stack {stack}")


def _run(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except FileNotFoundError as e:
        raise RuntimeUnavailable(f"{what}: the docker CLI ({argv[0]}) is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise RuntimeOperationError(f"{what}: {' '.join(argv)} took longer than 300 s") from e
    out = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise RuntimeOperationError(f"{what} failed (exit {done.returncode}): {out}")
    return out


def status(client: docker.DockerClient, stack: str = DEFAULT_STACK) -> list[ServiceState]:
    """Each service of the stack, sorted by model name."""
    try:
        services = client.api.services(filters={"label": f"{STACK_LABEL}={stack}"})
        states = [_state(client, s) for s in services]
    except docker.errors.APIError as e:
        raise RuntimeOperationError(f"docker service ls (stack {stack}): {e.explanation or e}") from e
    except docker.errors.DockerException as e:
        raise RuntimeUnavailable(f"docker service ls (stack {stack}): {e}") from e
    return sorted(states, key=lambda s: s.model)


def _state(client: docker.DockerClient, svc: dict[str, Any]) -> ServiceState:
    spec = svc.get("Spec") or {}
    labels = spec.get("Labels") or {}
    name = str(spec.get("Name", ""))
    tasks = client.api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
    tasks.sort(key=lambda t: str(t.get("UpdatedAt", "")), reverse=True)
    current = [str((t.get("Status") or {}).get("State", "")) for t in tasks]
    newest_error = next((str(t["Status"]["Err"]) for t in tasks if (t.get("Status") or {}).get("Err")), "")
    replicated = (spec.get("Mode") or {}).get("Replicated") or {}
    return ServiceState(
        model=str(labels.get(LABEL_MODEL, name)),
        service=name,
        config_hash=str(labels.get(LABEL_HASH, "")),
        desired=int(replicated.get("Replicas", 1)),
        running=sum(1 for s in current if s == "running"),
        task_states=tuple(current),
        error=newest_error,
        update=str((svc.get("UpdateStatus") or {}).get("State", "")),
    )


def task_containers(client: docker.DockerClient, service: str) -> list[str]:
    """Container IDs of the service's running tasks."""
    tasks = client.api.tasks(filters={"service": service, "desired-state": "running"})
    return sorted(
        str(t["Status"]["ContainerStatus"]["ContainerID"])
        for t in tasks
        if (t.get("Status") or {}).get("State") == "running"
        and ((t.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
    )
