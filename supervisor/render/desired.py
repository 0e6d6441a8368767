"""Manifest + profile + image lock + host -> DesiredModel, with the llama-server argv checked against the lock.

Everything here is pure except `load_desired`, the daemon's entry point, which
reads the manifest directory and the model files (facts.py). A model with a problem
is left out and its problems returned (`file:line: what (fix: how)`); the rest
still render. The flags and their checks are in argv.py, the memory estimate and
default start timeout in memory.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from supervisor.artifacts import gguf, hardware
from supervisor import paths
from supervisor.core.spec import (
    ContainerSpec,
    DesiredModel,
    GpuRequest,
    HealthPolicy,
    KvCache,
    LoadPolicy,
    Mount,
    RestartPolicy,
    RestartSettings,
    Serving,
)
from supervisor.artifacts.gguf import GgufFacts
from supervisor.artifacts.hardware import HostInfo
from supervisor.artifacts.lock import ImageLock, ImageRecord
from supervisor.core import kvcache
from supervisor.manifest.loader import ManifestSet, Origin, load_dir
from supervisor.manifest.schema import ModelManifest, ProfileManifest
from supervisor.render.argv import CORS_ORIGINS, OWNER_KEY, SPELLINGS, check_extra_args
from supervisor.render.facts import host_files, model_facts, model_host_path
from supervisor.render.memory import default_start_timeout, estimate_memory

CONTAINER_PORT = 8080
MODEL_DIR = "/models"
API_KEY_TARGET = "/run/secrets/api-key"
KV_TARGET = "/kv"                  # the kept KV cache's directory in the container (core/kvcache.py)
DEFAULT_GPU_LAYERS = 99

@dataclass(frozen=True)
class Placement:
    """What a model's profile (or auto) decides: image variant, threads, pinning, memory, GPU."""

    variant: str
    threads: int | None = None
    cpuset: str | None = None
    memory_bytes: int | None = None
    gpu: GpuRequest | None = None
    gpu_layers: int | None = None
    profile_name: str = "auto"


def image_tag(variant: str) -> str:
    return f"{paths.image_repo()}:{variant}"


def place(profile: ProfileManifest | None, host: HostInfo) -> Placement:
    """The placement for a profile, or for `auto` (profile None): the best variant this host runs."""
    if profile is None:
        variant = hardware.best_variant(host)
        if variant == "cuda":
            return Placement(variant, gpu=GpuRequest("nvidia"), gpu_layers=DEFAULT_GPU_LAYERS)
        return Placement(variant)
    variant = profile.variant
    if variant == "auto":
        variant = "cuda" if profile.gpu is not None else hardware.best_cpu_variant(host)
    gpu, layers = None, None
    if profile.gpu is not None:
        gpu, layers = GpuRequest("nvidia", device_ids=tuple(profile.gpu.device_ids)), profile.gpu.layers
    elif variant == "cuda":
        gpu, layers = GpuRequest("nvidia"), DEFAULT_GPU_LAYERS
    return Placement(variant, profile.threads, profile.cpuset, profile.memory, gpu, layers, profile.name)


def render(
    manifest: ModelManifest,
    *,
    profile: ProfileManifest | None,
    lock: ImageLock,
    host: HostInfo,
    origin: Origin,
    model_path: str,
    file_size: int,
    facts: GgufFacts | None = None,
    api_key_path: str | None = None,
    kv_off: str = "",
) -> tuple[DesiredModel | None, list[str]]:
    """One model's DesiredModel, or None and its problems.

    model_path and api_key_path are the host paths to mount: load_desired passes
    them resolved through symlinks (see supervisor.artifacts.hostfile). kv_off: why the
    daemon keeps no KV cache ('' when it may), so that no model mounts a directory it never prepares.
    """
    problems: list[str] = []
    name = manifest.name
    placement = place(profile, host)
    where_profile = origin.at("profile")
    why_not = hardware.missing_for(placement.variant, host)
    if why_not:
        problems.append(
            f"{where_profile}: model '{name}' needs image variant {placement.variant}, but {why_not}"
            f" (fix: use profile auto or a profile with variant: auto)"
        )
        return None, problems
    record = lock.get(placement.variant)
    if record is None:
        problems.append(
            f"{where_profile}: model '{name}' needs image variant {placement.variant}, which is not in the"
            f" image lock (fix: run 'llama-supervisorctl build {placement.variant}')"
        )
        return None, problems

    server, res = manifest.server, manifest.resources
    argv: list[str] = []

    def add(option: str, *values: str, required: bool = True) -> None:
        flag = next((f for f in SPELLINGS[option] if f in record.flags), None)
        if flag is None:
            if required:
                key = OWNER_KEY.get(option, "")
                problems.append(
                    f"{origin.at(key)}: image {record.tag} ({record.version}) has none of"
                    f" {', '.join(SPELLINGS[option])}, needed for {key or option}"
                    f" (fix: rebuild the image with 'llama-supervisorctl build {record.variant}')"
                )
            return
        argv.extend((flag, *values))

    threads = server.threads or placement.threads or hardware.default_threads(
        host, cpus=res.cpus, cpuset=res.cpuset or placement.cpuset
    )
    add("model", f"{MODEL_DIR}/{manifest.source.filename}")
    add("host", "0.0.0.0")
    add("port", str(CONTAINER_PORT))
    add("ctx_size", str(server.ctx_size))
    add("parallel", str(server.parallel))
    add("batch_size", str(server.batch_size))
    add("threads", str(threads))
    add("flash_attn", server.flash_attn)
    add("cache_type_k", server.cache_type_k)
    add("cache_type_v", server.cache_type_v)
    if server.api_key_file is not None:
        add("api_key_file", API_KEY_TARGET)
    add("no_webui", required=False)
    add("no_agent", required=False)
    add("no_mcp_proxy", required=False)
    add("cors_origins", CORS_ORIGINS, required=False)
    add("no_cors_credentials", required=False)
    if placement.gpu_layers is not None:
        add("gpu_layers", str(placement.gpu_layers))
    problems.extend(check_extra_args(server.extra_args, record, origin))
    argv.extend(server.extra_args)
    if problems:
        return None, problems
    keep, swa_full, kv_note = kv_choice(manifest, record, facts, kv_off)
    if swa_full:
        argv.append("--swa-full")

    mounts = [Mount(model_path, f"{MODEL_DIR}/{manifest.source.filename}", read_only=True)]
    if server.api_key_file is not None:
        mounts.append(Mount(api_key_path or server.api_key_file, API_KEY_TARGET, read_only=True))
    spec = ContainerSpec(
        model=name,
        image=image_tag(placement.variant),
        image_id=record.image_id,
        argv=tuple(argv),
        model_sha256=manifest.source.sha256,
        mounts=tuple(mounts),
        host_ip=server.host,
        host_port=server.port or 0,
        container_port=CONTAINER_PORT,
        memory_bytes=res.memory if res.memory is not None else placement.memory_bytes,
        pids_limit=res.pids,
        nano_cpus=int(res.cpus * 1e9) if res.cpus is not None else None,
        cpuset=res.cpuset or placement.cpuset,
        gpu=placement.gpu,
        cpu_shares=res.cpu_shares,
        log_max_bytes=manifest.logs.max_size,
        log_max_files=manifest.logs.max_files,
    )
    kv = KvCache(keep=False, note=kv_note)
    if keep:
        # The files are kept under the hash of the model as rendered without them: the same model,
        # image and flags find them again; any other change starts a directory of its own.
        key = spec.config_hash()[:kvcache.KEY_LEN]
        kv_dir = paths.kv_dir() / name / key
        kv = KvCache(keep=True, max_bytes=manifest.kv_cache.max_size, key=key, dir=str(kv_dir), note=kv_note)
        spec = replace(spec, argv=(*spec.argv, "--slot-save-path", KV_TARGET),
                       mounts=(*spec.mounts, Mount(str(kv_dir / kvcache.SLOT_DIR), KV_TARGET, read_only=False)))
    health = manifest.health
    rs = manifest.restart
    desired = DesiredModel(
        name=name,
        spec=spec,
        health=HealthPolicy(
            interval_s=health.interval,
            timeout_s=health.timeout,
            failures=health.failures,
            start_timeout_s=(
                health.start_timeout
                if health.start_timeout is not None
                else default_start_timeout(file_size, server.ctx_size,
                                           emulated=hardware.emulated(placement.variant, host))
            ),
        ),
        restart=RestartSettings(
            policy=RestartPolicy(rs.policy),
            backoff_initial_s=rs.backoff_initial,
            backoff_max_s=rs.backoff_max,
            max_failures=rs.max_failures,
        ),
        model_path=model_path,
        source_file=origin.file,
        api_key_file=server.api_key_file,
        serving=serving(manifest, spec, placement, file_size, facts),
        kv=kv,
    )
    return desired, problems


def kv_choice(manifest: ModelManifest, record: ImageRecord, facts: GgufFacts | None,
              kv_off: str = "") -> tuple[bool, bool, str]:
    """Whether the model's KV cache is kept across stops, whether that needs --swa-full, and why (said
    plainly in status and validate). kv_off: the daemon's reason to keep none ('' when it may)."""
    setting = manifest.kv_cache.keep
    extra = manifest.server.extra_args
    if setting is False:
        return False, False, "off (kv_cache.keep: false)"
    if kv_off:
        return False, False, kv_off
    if setting is None and manifest.lifecycle != "on-demand":
        return False, False, "off: lifecycle always (kv_cache.keep: true keeps it across restarts)"
    if "--slot-save-path" not in record.flags:
        return False, False, f"not kept: image {record.tag} ({record.version}) has no --slot-save-path"
    if "--no-slots" in extra:
        return False, False, ("not kept: extra_args has --no-slots, and the daemon finds the slots to save"
                              " through GET /slots (fix: remove --no-slots, or set kv_cache.keep: false)")
    if facts is None:
        return True, False, ("kept; whether the model uses sliding-window attention is unknown (its GGUF"
                             " header was not read), so a restored cache may not be reused")
    if not facts.swa:
        return True, False, "kept"
    if "--swa-full" not in record.flags:
        return False, False, (f"not kept: the model uses sliding-window attention ({facts.sliding_window}"
                              f" tokens) and image {record.tag} has no --swa-full, without which a restored"
                              f" cache is not reused")
    full = "--swa-full" in extra
    return True, not full, (f"kept with --swa-full: the model uses sliding-window attention"
                            f" ({facts.sliding_window} tokens), whose restored cache is reused only when"
                            f" every layer keeps the whole context (the memory estimate counts that)")


def serving(manifest: ModelManifest, spec: ContainerSpec, placement: Placement, file_size: int,
            facts: GgufFacts | None) -> Serving:
    """Gateway settings and what the model counts against the budgets: its memory limit when it has
    one (the most it can take), else the estimate; on a GPU profile the estimate counts as GPU memory."""
    server = manifest.server
    estimate, basis = estimate_memory(file_size, facts, ctx_size=server.ctx_size,
                                      cache_type_k=server.cache_type_k, cache_type_v=server.cache_type_v)
    memory, memory_basis = (spec.memory_bytes, "limit") if spec.memory_bytes is not None else (estimate, basis)
    return Serving(
        aliases=tuple(manifest.aliases),
        lifecycle=LoadPolicy(manifest.lifecycle),
        idle_ttl_s=manifest.idle_ttl,
        preload=manifest.preload,
        max_queue=manifest.max_queue,
        memory_bytes=memory,
        gpu_memory_bytes=estimate if placement.gpu is not None else 0,
        memory_basis=memory_basis,
    )


def render_all(
    manifests: ManifestSet,
    lock: ImageLock,
    host: HostInfo,
    *,
    file_sizes: Mapping[str, int],
    facts: Mapping[str, GgufFacts | None] | None = None,
    model_paths: Mapping[str, str] | None = None,
    key_paths: Mapping[str, str] | None = None,
    kv_off: str = "",
) -> tuple[dict[str, DesiredModel], list[str]]:
    """Every model that renders, and the problems of those that do not.

    file_sizes, facts, model_paths and key_paths are by model name (see host_files); a
    model absent from model_paths mounts its path as the manifest gives it. kv_off: see render.
    """
    desired: dict[str, DesiredModel] = {}
    problems: list[str] = []
    for name in sorted(manifests.models):
        manifest = manifests.models[name]
        profile = None if manifest.profile == "auto" else manifests.profiles.get(manifest.profile)
        model, found = render(
            manifest,
            profile=profile,
            lock=lock,
            host=host,
            origin=manifests.model_origins.get(name, Origin("<unknown>", 1)),
            model_path=(model_paths or {}).get(name) or str(model_host_path(manifest)),
            file_size=file_sizes.get(name, 0),
            facts=(facts or {}).get(name),
            api_key_path=(key_paths or {}).get(name),
            kv_off=kv_off,
        )
        problems.extend(found)
        if model is not None:
            desired[name] = model
    return desired, problems


def load_desired(
    manifests_dir: Path | str, lock: ImageLock, host: HostInfo, *, kv_off: str = ""
) -> tuple[dict[str, DesiredModel], list[str]]:
    """Read the manifests (ManifestError propagates) and check their host files, then render_all
    (kv_off: the daemon's reason to keep no KV cache, '' when it may)."""
    manifests = load_dir(manifests_dir)
    files = host_files(manifests)
    budget = gguf.Budget()     # for every header this read parses together: a thousand hostile files cost one budget
    facts = {name: model_facts(Path(files.models.get(name) or model_host_path(m)), files.sizes.get(name, 0), budget)
             for name, m in manifests.models.items() if name not in files.refused}
    desired, problems = render_all(manifests, lock, host, file_sizes=files.sizes, facts=facts,
                                   model_paths=files.models, key_paths=files.keys, kv_off=kv_off)
    for name in files.refused:
        desired.pop(name, None)
    return desired, files.problems + problems


