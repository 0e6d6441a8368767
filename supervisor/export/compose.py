"""A Compose Specification file that runs the same hardened containers llama-supervisord runs.

For an operator who hands a host to compose instead of the daemon: each model
is a service with the daemon's argv, limits and hardening, published on the
manifest's address (loopback by default), restarted by the engine
(`on-failure:<max_failures>`, CIS Docker Benchmark 5.14), health-checked by the
image's static probe with the manifest's timing.
"""

from __future__ import annotations

from typing import Any

from supervisor.export.common import (
    HEALTHCHECK,
    ExportModel,
    Options,
    byte_size,
    cpus,
    docker_labels,
    dump,
    header,
    seconds,
)
from supervisor.render.desired import API_KEY_TARGET

NETWORK = "models"


def restart(model: ExportModel) -> str:
    """The manifest's policy as Docker's: never -> no; always and on-failure -> on-failure:<max_failures>.

    `always` would restart a crash-looping model forever; on-failure with the
    manifest's limit is the engine's nearest to the daemon's FATAL.
    """
    rs = model.desired.restart
    if rs.policy.value == "never":
        return "no"
    return f"on-failure:{rs.max_failures}"


def healthcheck(model: ExportModel) -> dict[str, Any]:
    h = model.desired.health
    return {
        "test": ["CMD", *HEALTHCHECK],
        "interval": seconds(h.interval_s),
        "timeout": seconds(h.timeout_s),
        "retries": h.failures,
        "start_period": seconds(h.start_timeout_s),
    }


def api_key_secret(model: ExportModel) -> str:
    return f"{model.name}-api-key"


def logging(spec: Any) -> dict[str, Any]:
    """The daemon's log rotation (json-file max-size / max-file), for compose and stack files alike."""
    return {"driver": "json-file", "options": {"max-size": str(spec.log_max_bytes), "max-file": str(spec.log_max_files)}}


def service(model: ExportModel, options: Options) -> dict[str, Any]:
    spec = model.desired.spec
    svc: dict[str, Any] = {
        "image": model.image(options),
        "command": list(spec.argv),
        "user": spec.user,
        "read_only": spec.read_only_rootfs,
        "tmpfs": [f"/tmp:rw,noexec,nosuid,size={spec.tmpfs_size}"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        # no port in the manifest: the engine picks one ("IP::PORT"), as the daemon has it do
        "ports": [f"{spec.host_ip}:{spec.host_port or ''}:{spec.container_port}"],
        "volumes": [
            {"type": "bind", "source": m.source, "target": m.target, "read_only": m.read_only}
            for m in spec.mounts if m.target != API_KEY_TARGET
        ],
        "pids_limit": spec.pids_limit,
        "cpu_shares": spec.cpu_shares,
        "restart": restart(model),
        "healthcheck": healthcheck(model),
        "labels": docker_labels(model),
        "networks": [NETWORK],
        "logging": logging(spec),
    }
    if model.variant not in options.image_refs:
        svc["pull_policy"] = "never"            # the image exists only locally: never ask a registry
    if spec.memory_bytes is not None:
        svc["mem_limit"] = byte_size(spec.memory_bytes)
        svc["memswap_limit"] = byte_size(spec.memory_bytes)
    if spec.nano_cpus is not None:
        svc["cpus"] = cpus(spec.nano_cpus)
    if spec.cpuset is not None:
        svc["cpuset"] = spec.cpuset
    if model.desired.api_key_file is not None:
        svc["secrets"] = [{"source": api_key_secret(model), "target": API_KEY_TARGET.rsplit("/", 1)[1]}]
    if spec.gpu is not None:
        device: dict[str, Any] = {"driver": spec.gpu.vendor, "capabilities": list(spec.gpu.capabilities)}
        if spec.gpu.device_ids:
            device["device_ids"] = list(spec.gpu.device_ids)
        else:
            device["count"] = "all"
        svc["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return svc


def document(models: list[ExportModel], options: Options) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "services": {m.name: service(m, options) for m in models},
        "networks": {
            NETWORK: {
                "driver": "bridge",
                "driver_opts": {"com.docker.network.bridge.enable_icc": "false"},
            },
        },
    }
    secrets = {api_key_secret(m): {"file": m.desired.api_key_file} for m in models if m.desired.api_key_file}
    if secrets:
        doc["secrets"] = secrets
    return doc


def render(models: list[ExportModel], options: Options) -> str:
    return header("compose", (
        "Run with `docker compose up -d` (or docker-compose): the same containers llama-supervisord runs,",
        "restarted by the engine instead (on-failure, up to the manifest's max_failures).",
    )) + dump(document(models, options))
