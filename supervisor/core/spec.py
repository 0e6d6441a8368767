"""What a model should be: the desired container and its policies, as values.

Produced from manifests + profile + image lock by supervisor.render.desired; consumed by
the planner and the runtime adapter. Everything that shapes the container is in
`ContainerSpec` and goes into its config hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from enum import Enum
from typing import Literal


@dataclass(frozen=True)
class Mount:
    source: str          # host path
    target: str          # path in the container
    read_only: bool = True


@dataclass(frozen=True)
class GpuRequest:
    vendor: Literal["nvidia"]
    device_ids: tuple[str, ...] = ()   # empty: all GPUs
    capabilities: tuple[str, ...] = ("gpu",)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything that shapes one model's container (all of it is hashed)."""

    model: str
    image: str                       # the tag to create from, e.g. llama-supervisor/llama-server:cpu-avx2
    image_id: str                    # sha256:... from the image lock; the runtime creates by ID
    argv: tuple[str, ...]            # llama-server arguments (the image's ENTRYPOINT is llama-server)
    model_sha256: str
    mounts: tuple[Mount, ...]
    host_ip: str                     # 127.0.0.1 unless the manifest asks otherwise
    host_port: int                   # 0: the engine picks a free port (reported in ObservedContainer.host_port)
    container_port: int = 8080
    memory_bytes: int | None = None
    pids_limit: int = 256
    nano_cpus: int | None = None     # cpus * 1e9
    cpuset: str | None = None
    gpu: GpuRequest | None = None
    user: str = "65532:65532"
    read_only_rootfs: bool = True
    tmpfs_size: str = "64m"
    cpu_shares: int = 512            # relative CPU weight; docker's default is 1024 (CIS 5.11)
    network: str = "llama-supervisor"  # a user-defined bridge without ICC, not docker0 (CIS 5.29)
    log_max_bytes: int = 10 * 1024 * 1024   # json-file rotation: at most log_max_files files this big
    log_max_files: int = 3

    def canonical(self) -> dict[str, object]:
        return asdict(self)

    def config_hash(self) -> str:
        """sha256 of canonical JSON (sorted keys): stable across key order and runs."""
        return self._config_hash

    @cached_property
    def _config_hash(self) -> str:
        # The spec is frozen, so its hash is computed once: the planner asks for
        # it for every model on every pass.
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


class RestartPolicy(str, Enum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


@dataclass(frozen=True)
class HealthPolicy:
    interval_s: float = 2.0
    timeout_s: float = 2.0
    failures: int = 3
    start_timeout_s: float = 60.0     # render scales the default from file size and ctx_size


@dataclass(frozen=True)
class RestartSettings:
    policy: RestartPolicy = RestartPolicy.ALWAYS
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_failures: int = 5             # consecutive failed starts before FATAL
    healthy_reset_s: float = 600.0    # healthy this long resets the backoff
    stable_after_s: float = 10.0      # a crash later than this after healthy restarts at once


class LoadPolicy(str, Enum):
    ALWAYS = "always"          # kept running
    ON_DEMAND = "on-demand"    # started by a gateway request, stopped after idle_ttl_s without one


@dataclass(frozen=True)
class Serving:
    """How the gateway serves a model and what it counts against the memory budgets (not hashed:
    none of it shapes the container)."""

    aliases: tuple[str, ...] = ()
    lifecycle: LoadPolicy = LoadPolicy.ALWAYS
    idle_ttl_s: float = 300.0
    preload: bool = False             # on-demand: started when room is free and nothing waits; no idle stop
    max_queue: int = 64
    memory_bytes: int = 0             # counted against the RAM budget
    gpu_memory_bytes: int = 0         # counted against the GPU memory budget (GPU profiles only)
    memory_basis: str = ""            # how memory_bytes was found: "limit" or "estimate: ..."

    @property
    def on_demand(self) -> bool:
        return self.lifecycle is LoadPolicy.ON_DEMAND


@dataclass(frozen=True)
class KvCache:
    """Whether the model's KV cache is kept across stops (core/kvcache.py) and where (not hashed
    itself: the cache directory and flags it adds are in the spec)."""

    keep: bool = False
    max_bytes: int = 0                # the files of this model, all config keys together
    key: str = ""                     # the config key its files are kept under
    dir: str = ""                     # host directory of this key (index.json, slots/)
    note: str = ""                    # why it is not kept, or how it is (status, validate)


@dataclass(frozen=True)
class DesiredModel:
    """One model as the manifests want it."""

    name: str
    spec: ContainerSpec
    health: HealthPolicy = field(default_factory=HealthPolicy)
    restart: RestartSettings = field(default_factory=RestartSettings)
    model_path: str = ""              # host path of the GGUF file (verified before every create)
    source_file: str = ""             # the manifest it came from, for messages
    api_key_file: str | None = None
    serving: Serving = field(default_factory=Serving)
    kv: KvCache = field(default_factory=KvCache)
