"""Kubernetes objects: a Deployment and a ClusterIP Service per model.

How a manifest maps:
- argv, image (a pushed, digest-pinned reference given with --image-ref;
  otherwise the local tag, pulled IfNotPresent), user 65532;
- health: startupProbe from the start budget (failureThreshold = budget /
  interval), readinessProbe and livenessProbe on /health from interval, timeout
  and failures;
- resources: requests = limits (Guaranteed QoS) for memory and CPU;
  `nvidia.com/gpu` for GPU profiles (a count: Kubernetes does not pick device IDs);
- hardening: runAsNonRoot, readOnlyRootFilesystem, drop ALL,
  allowPrivilegeEscalation false, seccomp RuntimeDefault, no service-account
  token, an in-memory emptyDir for /tmp;
- the model file: a `source.path` model is a hostPath (type File) at that path;
  a fetched model (url, hf, pypi) comes from the PersistentVolumeClaim
  `llama-supervisor-models` holding the model cache (`<sha256>/<file>` under
  `models/`, filled by `llama-supervisorctl fetch-model`), read-only;
- the API key: the Secret `<model>-api-key` (key `api-key`), created by the operator;
- server.host: a ClusterIP Service is the cluster's loopback: reachable inside
  the cluster only; expose it with an Ingress or a port-forward.
- Not expressible per pod: pids limit (kubelet --pod-max-pids), cpuset
  (CPU manager static policy), cpu_shares (derived from requests).
"""

from __future__ import annotations

import math
from typing import Any

from supervisor.export.common import (
    ExportModel,
    Options,
    dump_all,
    header,
    quantity,
    start_first,
    whole_seconds,
)
from supervisor.render.desired import API_KEY_TARGET

MODELS_CLAIM = "llama-supervisor-models"
ANNOTATION = "llama-supervisor.io"
GPU_RESOURCE = "nvidia.com/gpu"


def labels(model: ExportModel) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "llama-server",
        "app.kubernetes.io/instance": model.name,
        "app.kubernetes.io/version": f"b{model.build_number}",
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "llama-supervisor",
        "app.kubernetes.io/managed-by": "llama-supervisorctl",
    }


def selector(model: ExportModel) -> dict[str, str]:
    return {"app.kubernetes.io/name": "llama-server", "app.kubernetes.io/instance": model.name}


def object_annotations(model: ExportModel) -> dict[str, str]:
    return {
        f"{ANNOTATION}/config-hash": model.config_hash,
        f"{ANNOTATION}/image-id": model.image_id,
        f"{ANNOTATION}/manifest": model.manifest_file,
    }


def metadata(model: ExportModel, options: Options, name: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or model.name}
    if options.namespace:
        meta["namespace"] = options.namespace
    meta["labels"] = labels(model)
    meta["annotations"] = object_annotations(model)
    return meta


def probes(model: ExportModel) -> dict[str, Any]:
    h = model.desired.health
    period, timeout = whole_seconds(h.interval_s), whole_seconds(h.timeout_s)
    get = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        "startupProbe": {**get, "periodSeconds": period, "timeoutSeconds": timeout,
                         "failureThreshold": max(1, math.ceil(h.start_timeout_s / period))},
        "readinessProbe": {**get, "periodSeconds": period, "timeoutSeconds": timeout, "failureThreshold": 1},
        "livenessProbe": {**get, "periodSeconds": period, "timeoutSeconds": timeout,
                          "failureThreshold": h.failures},
    }


def resources(model: ExportModel) -> dict[str, Any]:
    spec = model.desired.spec
    limits: dict[str, Any] = {}
    if spec.nano_cpus is not None:
        limits["cpu"] = f"{spec.nano_cpus // 1_000_000}m"
    if spec.memory_bytes is not None:
        limits["memory"] = quantity(spec.memory_bytes)
    requests = dict(limits)
    if spec.gpu is not None:
        limits[GPU_RESOURCE] = len(spec.gpu.device_ids) or 1
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def volumes(model: ExportModel) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) for the model file, /tmp and the API key."""
    spec = model.desired.spec
    model_mount = spec.mounts[0]
    mount: dict[str, Any] = {"name": "model", "mountPath": model_mount.target, "readOnly": True}
    if model.source_kind == "path":
        vols: list[dict[str, Any]] = [{"name": "model", "hostPath": {"path": model_mount.source, "type": "File"}}]
    else:
        sha = spec.model_sha256
        vols = [{"name": "model", "persistentVolumeClaim": {"claimName": MODELS_CLAIM, "readOnly": True}}]
        mount["subPath"] = f"models/{sha}/{model.model_file}"
    mounts = [mount, {"name": "tmp", "mountPath": "/tmp"}]
    vols.append({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": _size(spec.tmpfs_size)}})
    if model.desired.api_key_file is not None:
        key = API_KEY_TARGET.rsplit("/", 1)[1]
        vols.append({"name": "api-key", "secret": {
            "secretName": f"{model.name}-api-key", "defaultMode": 0o400,
            "items": [{"key": key, "path": key}],
        }})
        mounts.append({"name": "api-key", "mountPath": API_KEY_TARGET.rsplit("/", 1)[0], "readOnly": True})
    return vols, mounts


def _size(docker_size: str) -> str:
    units = {"k": "Ki", "m": "Mi", "g": "Gi"}
    return docker_size[:-1] + units[docker_size[-1]] if docker_size[-1] in units else docker_size


def deployment(model: ExportModel, models: list[ExportModel], options: Options) -> dict[str, Any]:
    spec = model.desired.spec
    uid, gid = (int(x) for x in spec.user.split(":"))
    vols, mounts = volumes(model)
    container: dict[str, Any] = {
        "name": "llama-server",
        "image": model.image(options),
        "imagePullPolicy": "IfNotPresent",
        "args": list(spec.argv),
        "ports": [{"name": "http", "containerPort": spec.container_port, "protocol": "TCP"}],
        **probes(model),
        "resources": resources(model),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": spec.read_only_rootfs,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    strategy: dict[str, Any] = (
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        if start_first(model, models, options.node_memory_bytes) else {"type": "Recreate"}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(model, options),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector(model)},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": labels(model), "annotations": {f"{ANNOTATION}/config-hash": model.config_hash}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": uid,
                        "runAsGroup": gid,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": vols,
                },
            },
        },
    }


def service(model: ExportModel, options: Options) -> dict[str, Any]:
    spec = model.desired.spec
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(model, options),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(model),
            "ports": [{"name": "http", "port": spec.host_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def documents(models: list[ExportModel], options: Options) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for m in models:
        docs.append(deployment(m, models, options))
        docs.append(service(m, options))
    return docs


def render(models: list[ExportModel], options: Options) -> str:
    extra: list[str] = ["Apply: kubectl apply -f kubernetes.yaml"]
    unpinned = sorted({m.variant for m in models if m.variant not in options.image_refs})
    if unpinned:
        extra.append(
            f"NOT pinned by digest ({', '.join(unpinned)}): push the image and render with"
            " --image-ref VARIANT=REPO@sha256:DIGEST; until then nodes need the local image."
        )
    if any(m.source_kind == "cache" for m in models):
        extra.append(f"Fetched models come from the PersistentVolumeClaim {MODELS_CLAIM} (the model cache).")
    if any(m.desired.api_key_file for m in models):
        extra.append("API keys: kubectl create secret generic MODEL-api-key --from-file=api-key=FILE")
    return header("kubernetes", tuple(extra)) + dump_all(list(documents(models, options)))
