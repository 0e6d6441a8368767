"""A stack file for `docker stack deploy`: one Swarm service per model.

What Swarm enforces here: the argv, the image, non-root user, read-only root
filesystem, dropped capabilities, a tmpfs /tmp, memory / CPU / pids limits,
restart policy (condition, delay, max_attempts, window), update order, health
check, placement by CPU architecture, one overlay network per model (models
cannot reach each other), the API key as a Swarm secret.

What Swarm cannot express, and what the render does instead:
- publishing on 127.0.0.1 only: ports are published in host mode (on the node
  that runs the task, no routing mesh) and the header of the file says to
  firewall them (DOCKER-USER rule);
- no-new-privileges, cpu_shares, cpuset and memory-swap limits: a service has no
  such settings (security_opt and the rest are ignored by stack deploy), so they
  are left out rather than silently dropped;
- a specific GPU: Swarm schedules generic resources; the render asks for
  NVIDIA-GPU units, which nodes must advertise (dockerd `node-generic-resources`).

Images: the digests `llama-supervisorctl push` recorded in the lock, as
`<registry>/<repository>@sha256:...`, deployed with `--resolve-image always`
(every node pulls the very image). Where a variant was never pushed the stack
names the local tag and is deployed with `--resolve-image never`: every node
must then hold the same image ID (docker save | docker load), which the
image-id label records.
"""

from __future__ import annotations

from typing import Any

from supervisor.export.common import (
    ExportModel,
    Options,
    byte_size,
    cpus,
    docker_labels,
    dump,
    header,
    seconds,
    start_first,
)
from supervisor.export.compose import api_key_secret, healthcheck, logging
from supervisor.render.desired import API_KEY_TARGET

STACK_VERSION = "3.9"
ARCH = {"arm64": "aarch64"}          # Swarm's node.platform.arch; every other variant is x86_64
CONDITION = {"always": "any", "on-failure": "on-failure", "never": "none"}
USER_UID = "65532"


def network(model: ExportModel) -> str:
    return f"{model.name}-net"


def service(model: ExportModel, models: list[ExportModel], options: Options) -> dict[str, Any]:
    spec, rs, health = model.desired.spec, model.desired.restart, model.desired.health
    limits: dict[str, Any] = {"pids": spec.pids_limit}
    reservations: dict[str, Any] = {}
    if spec.nano_cpus is not None:
        limits["cpus"] = cpus(spec.nano_cpus)
    if spec.memory_bytes is not None:
        limits["memory"] = byte_size(spec.memory_bytes)
        reservations["memory"] = byte_size(spec.memory_bytes)   # the scheduler places by it
    if spec.gpu is not None:
        units = len(spec.gpu.device_ids) or 1
        reservations["generic_resources"] = [{"discrete_resource_spec": {"kind": "NVIDIA-GPU", "value": units}}]
    resources: dict[str, Any] = {"limits": limits}
    if reservations:
        resources["reservations"] = reservations
    # The published host port is held by the old task on its node: a new one can start first only elsewhere.
    order = ("start-first" if options.swarm_nodes > 1 and start_first(model, models, options.node_memory_bytes)
             else "stop-first")
    svc: dict[str, Any] = {
        "image": model.image(options),
        "command": list(spec.argv),
        "user": spec.user,
        "read_only": spec.read_only_rootfs,
        "cap_drop": ["ALL"],
        "ports": [{"target": spec.container_port, **({"published": spec.host_port} if spec.host_port else {}),
                   "protocol": "tcp", "mode": "host"}],
        "volumes": [
            {"type": "bind", "source": m.source, "target": m.target, "read_only": m.read_only}
            for m in spec.mounts if m.target != API_KEY_TARGET
        ] + [{"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": _tmpfs_bytes(spec.tmpfs_size)}}],
        "healthcheck": healthcheck(model),
        "labels": docker_labels(model),
        "networks": [network(model)],
        "logging": logging(spec),
        "deploy": {
            "mode": "replicated",
            "replicas": 1,
            "labels": docker_labels(model),
            "resources": resources,
            "restart_policy": {
                "condition": CONDITION[rs.policy.value],
                "delay": seconds(rs.backoff_initial_s),
                "max_attempts": rs.max_failures,
                "window": seconds(health.start_timeout_s),
            },
            "update_config": {
                "parallelism": 1,
                "order": order,
                "failure_action": "rollback",
                "monitor": seconds(health.start_timeout_s),
            },
            "rollback_config": {"parallelism": 1, "order": "stop-first"},
            "placement": {"constraints": [f"node.platform.arch == {ARCH.get(model.variant, 'x86_64')}"]},
        },
    }
    if model.desired.api_key_file is not None:
        svc["secrets"] = [{
            "source": api_key_secret(model), "target": API_KEY_TARGET.rsplit("/", 1)[1],
            "uid": USER_UID, "gid": USER_UID, "mode": 0o400,
        }]
    return svc


def _tmpfs_bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def document(models: list[ExportModel], options: Options) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": STACK_VERSION,
        "services": {m.name: service(m, models, options) for m in models},
        "networks": {network(m): {"driver": "overlay"} for m in models},
    }
    secrets = {api_key_secret(m): {"file": m.desired.api_key_file} for m in models if m.desired.api_key_file}
    if secrets:
        doc["secrets"] = secrets
    return doc


def pinned(models: list[ExportModel], options: Options) -> bool:
    """Every model's image is a pushed, digest-pinned reference: the swarm may resolve them on the registry."""
    return bool(models) and all(m.variant in options.image_refs for m in models)


def render(models: list[ExportModel], options: Options) -> str:
    ports = " ".join(str(m.desired.spec.host_port) for m in models) or "PORT"
    resolve = "always" if pinned(models, options) else "never"
    images = (
        "Every image is pinned by digest in a registry ('llama-supervisorctl push'): each node pulls it there.",
    ) if resolve == "always" else (
        "The image exists only where it was built: every node needs the same image ID (docker save | docker load),",
        "or push it ('llama-supervisorctl push --registry HOST:PORT') and render again to pin its digest.",
    )
    return header("swarm", (
        f"Deploy: docker stack deploy --resolve-image {resolve} -c stack.yaml llama"
        " (or: llama-supervisorctl deploy swarm).",
        "Swarm cannot publish on 127.0.0.1: each port is published in host mode on EVERY interface of the node",
        "that runs the model. Firewall them from other hosts (EXT: the node's external interface):",
        f"  for p in {ports}; do iptables -I DOCKER-USER -i EXT -p tcp -m conntrack --ctorigdstport $p -j DROP; done",
        *images,
    )) + dump(document(models, options))
