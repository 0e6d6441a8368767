"""What every export target shares: the models to render, the options, labels, units and YAML.

An `ExportModel` is the daemon's own DesiredModel for a model (so a render and
a launch can never disagree about argv, limits or hardening) plus what only an
export needs: the image reference to write, the image ID, where the model file
comes from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

import yaml

from supervisor.render import desired as render_mod
from supervisor.core.spec import DesiredModel
from supervisor.artifacts.hardware import HostInfo
from supervisor.artifacts.lock import ImageLock
from supervisor.errors import ConfigError
from supervisor.manifest.loader import ManifestSet

LABEL_PREFIX = "io.llama-supervisor"
LABEL_MODEL = f"{LABEL_PREFIX}.model"
LABEL_HASH = f"{LABEL_PREFIX}.config-hash"
LABEL_IMAGE_ID = f"{LABEL_PREFIX}.image-id"
LABEL_SOURCE = f"{LABEL_PREFIX}.manifest"
HEALTHCHECK = ("/usr/local/bin/llama-healthcheck", str(render_mod.CONTAINER_PORT))

SourceKind = Literal["path", "cache"]


@dataclass(frozen=True)
class Options:
    """Choices a render takes besides the manifests.

    image_refs: variant -> image reference to write instead of the local tag,
        e.g. a pushed `<repo>@sha256:<digest>` (Kubernetes pulls by digest).
    namespace: Kubernetes namespace for every object (None: the kubectl context's).
    node_memory_bytes: memory of one node; an update starts the new copy first
        only when every model's limit plus one more copy of this one fits.
    swarm_nodes: nodes of the swarm. A model's host-mode port is taken on the
        node that runs it, so a Swarm update can start the new task first only
        on another node: start-first needs two nodes (and the memory).
    """

    image_refs: Mapping[str, str] = field(default_factory=dict)
    namespace: str | None = None
    node_memory_bytes: int = 0
    swarm_nodes: int = 1


@dataclass(frozen=True)
class ExportModel:
    name: str
    desired: DesiredModel
    variant: str
    image_id: str
    build_number: int
    source_kind: SourceKind          # path: a file the operator placed; cache: fetched into the model cache
    manifest_file: str               # basename of the manifest the model came from

    @property
    def model_file(self) -> str:
        return PurePosixPath(self.desired.spec.mounts[0].target).name

    @property
    def config_hash(self) -> str:
        return self.desired.spec.config_hash()

    def image(self, options: Options) -> str:
        return options.image_refs.get(self.variant, self.desired.spec.image)


def collect(
    manifests: ManifestSet, lock: ImageLock, host: HostInfo, *, file_sizes: Mapping[str, int]
) -> tuple[list[ExportModel], list[str]]:
    """Every model that renders (sorted by name), and the problems of those that do not."""
    desired, problems = render_mod.render_all(manifests, lock, host, file_sizes=file_sizes)
    by_id = {r.image_id: r for r in lock.images.values()}
    models = []
    for name in sorted(desired):
        d = desired[name]
        record = by_id[d.spec.image_id]
        manifest = manifests.models[name]
        models.append(ExportModel(
            name=name,
            desired=d,
            variant=record.variant,
            image_id=record.image_id,
            build_number=record.build_number,
            source_kind="path" if manifest.source.path else "cache",
            manifest_file=PurePosixPath(d.source_file).name,
        ))
    return models, problems


def pushed_refs(lock: ImageLock, variants: set[str], registry: str | None = None) -> dict[str, str]:
    """variant -> `<registry>/<repository>@sha256:...` for the variants the lock records as pushed (pure).

    With `registry`, the pushes to that registry; without, the one registry the
    `variants` were pushed to, and a ConfigError naming them when there are several.
    """
    pushed = {v: r.pushed for v, r in lock.images.items() if v in variants and r.pushed}
    if registry is None:
        registries = sorted({p.registry for ps in pushed.values() for p in ps})
        if len(registries) > 1:
            raise ConfigError(f"the lock records pushes to {', '.join(registries)}: pick one with --registry")
        registry = registries[0] if registries else None
    return {v: p.ref for v, ps in pushed.items() for p in ps if p.registry == registry}


def docker_labels(model: ExportModel) -> dict[str, str]:
    """Labels for Compose and Swarm objects. Not `io.llama-supervisor.managed`: the daemon must not adopt them."""
    return {
        LABEL_MODEL: model.name,
        LABEL_HASH: model.config_hash,
        LABEL_IMAGE_ID: model.image_id,
        LABEL_SOURCE: model.manifest_file,
    }


def start_first(model: ExportModel, models: list[ExportModel], node_memory_bytes: int) -> bool:
    """Whether an update may run the new copy beside the old one: every limit known and all of it fits."""
    limits = [m.desired.spec.memory_bytes for m in models]
    if node_memory_bytes <= 0 or any(limit is None for limit in limits):
        return False
    mine = model.desired.spec.memory_bytes or 0
    return sum(limit or 0 for limit in limits) + mine <= node_memory_bytes


def seconds(value: float) -> str:
    """A Go duration string: 2 -> '2s', 13.53 -> '13.53s'."""
    return f"{round(value, 3):g}s"


def whole_seconds(value: float) -> int:
    return max(1, math.ceil(value))


def byte_size(n: int) -> str:
    """Docker's spelling: 1073741824 -> '1g', 536870912 -> '512m', else bytes."""
    for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}b"


def quantity(n: int) -> str:
    """Kubernetes' spelling: 1073741824 -> '1Gi', else Mi, Ki or plain bytes."""
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def cpus(nano_cpus: int) -> str:
    """2_000_000_000 -> '2', 1_500_000_000 -> '1.5'."""
    return f"{nano_cpus / 1e9:g}"


def header(target: str, extra: tuple[str, ...] = ()) -> str:
    lines = [
        f"# Rendered by `llama-supervisorctl render {target}` from the manifests, profiles and image lock.",
        "# Do not edit: change the manifests and render again. Each object carries the model's config hash",
        f"# ({LABEL_HASH}), the same hash llama-supervisord labels its containers with.",
        *extra,
    ]
    return "".join(f"{line}\n" if line.startswith("#") else f"# {line}\n" for line in lines)


class _Dumper(yaml.SafeDumper):
    """Block style, keys in the order the renderer wrote them, lists indented under their key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True                     # no &id001 anchors: each object reads on its own


def dump(doc: object) -> str:
    return str(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096,
                     allow_unicode=True))


def dump_all(docs: list[object]) -> str:
    return str(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096,
                             allow_unicode=True, explicit_start=True))
