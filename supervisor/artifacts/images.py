"""Build llama-server image variants through the docker SDK, record them, verify them.

`build` prepares a context holding only the verified source tarball, streams
the build log as progress, then derives the image's lock record from the image
itself: ID, SHA-256 of the llama-server binary, `--version`, the flags its
`--help` lists and those whose help text warns against untrusted environments.
`derive` does the same for verify, so a retagged image or a changed binary
shows up as a field that differs from the lock. The fields read
from the image's metadata come first and need no container; the rest are read
through supervisor.artifacts.probe, whose containers are labelled and always removed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import docker
import docker.errors
from docker.models.images import Image

import requests.exceptions

from supervisor import paths
from supervisor.errors import (
    BuildError,
    ImageMismatch,
    RetryableError,
    RuntimeUnavailable,
    SupervisorError,
)
from supervisor.artifacts.lock import ImageLock, ImageRecord, compare
from supervisor.artifacts.probe import ENGINE_HINT, ImageProbe
from supervisor.artifacts.engine import UNREACHABLE_HINT, engine_errors
from supervisor.artifacts.source import SourceTarball

Progress = Callable[[str], None]

BINARY = "/usr/local/bin/llama-server"
TOOLCHAIN = "/usr/local/share/llama-server/toolchain.txt"   # the builder's package versions (images/Dockerfile)
LOCAL_BUILDER = "llama-supervisor/builder:bookworm"   # made by scripts/make-base-images
LOCAL_CUDA_BUILDER = "llama-supervisor/cuda-builder:bookworm"   # made by scripts/make-base-images cuda
CUDA_COMPAT = "cuda-compat.cuh"       # images/: what CUDA 12 headers define and llama.cpp uses with 11.8 too
CUDA_OFFLINE_HINT = ("without a registry the CUDA builder base comes from Debian's nvidia-cuda-toolkit: "
                     "run 'make image-cuda' (or 'sudo scripts/make-base-images cuda', then build again)")
LOCAL_CROSS_BUILDER = {"arm64": "llama-supervisor/builder:bookworm-cross-arm64"}   # the same, for x86-64 hosts
REGISTRY_BUILDER = "debian:bookworm-slim"             # images/Dockerfile's default BUILDER
DEFAULT_ARM_ARCH = "armv8-a"                           # -march of the arm64 build: NEON only
ARM_ARCH = re.compile(r"^armv[0-9]+(\.[0-9]+)?-a(\+[a-z0-9]+)*$")

CPU_VARIANTS = ("cpu-generic", "cpu-avx2", "cpu-avx512", "arm64")
VARIANTS = (*CPU_VARIANTS, "cuda")
ARCH = {"arm64": "arm64"}  # everything else is amd64
MACHINE = {"amd64": ("x86_64", "amd64"), "arm64": ("aarch64", "arm64")}   # uname -m spellings per docker arch


def host_arch() -> str:
    """This host's architecture as docker names it (amd64, arm64, ...)."""
    machine = os.uname().machine
    return next((arch for arch, names in MACHINE.items() if machine in names), machine)


def is_cross(variant: str) -> bool:
    """Whether `variant` is built for another architecture than this host's (cross-compiled, run under emulation)."""
    return ARCH.get(variant, "amd64") != host_arch()


def platform_of(variant: str) -> str:
    return f"linux/{ARCH.get(variant, 'amd64')}"


def tag_for(variant: str) -> str:
    return f"{paths.image_repo()}:{variant}"


def images_dir() -> Path:
    """images/ of this checkout, else the copy a non-editable install put under <prefix>/share."""
    candidates = [
        Path(os.environ["LLAMA_SUPERVISOR_IMAGES_DIR"]) if os.environ.get("LLAMA_SUPERVISOR_IMAGES_DIR") else None,
        Path(__file__).resolve().parents[2] / "images",      # <checkout>/supervisor/artifacts/images.py
        Path(sys.prefix) / "share" / "llama-supervisor" / "images",
    ]
    for c in candidates:
        if c is not None and (c / "Dockerfile").is_file():
            return c
    raise BuildError("no images/Dockerfile found: set LLAMA_SUPERVISOR_IMAGES_DIR to the images/ directory")


def dockerfile_for(variant: str) -> Path:
    if variant not in VARIANTS:
        raise BuildError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
    return images_dir() / ("cuda.Dockerfile" if variant == "cuda" else "Dockerfile")


def client_from_env() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise RuntimeUnavailable(f"cannot reach the Docker engine ({e}): {UNREACHABLE_HINT}") from e


def build(
    client: docker.DockerClient,
    variant: str,
    source: SourceTarball,
    *,
    progress: Progress,
    builder: str | None = None,
    no_cache: bool = False,
    cuda_arch: str | None = None,
    arm_arch: str | None = None,
    tag: str | None = None,
    context: Path | None = None,
) -> ImageRecord:
    """Build one variant from a verified tarball and return its lock record.

    no_cache rebuilds every layer (to time a cold build, or `verify --rebuild`);
    normally the layer cache makes an unchanged rebuild take about a second.
    cuda_arch is CMAKE_CUDA_ARCHITECTURES for the cuda variant (required for it);
    arm_arch is the arm64 build's -march (default armv8-a). tag (default: the
    variant's) and context (default: one per source under the state dir) let a
    rebuild leave the locked image and its context alone. LLAMA_SUPERVISOR_BUILD_CPUSET
    (e.g. "1") pins the build's containers to those CPUs.
    """
    dockerfile = dockerfile_for(variant)
    tag = tag or tag_for(variant)
    context = _context_dir(source, context)
    buildargs = build_args(client, variant, source, builder=builder, arm_arch=arm_arch, cuda_arch=cuda_arch)
    hint = f"; {CUDA_OFFLINE_HINT}" if variant == "cuda" and "BUILDER" not in buildargs else ""
    shutil.copyfile(dockerfile, context / "Dockerfile")
    for name in ("healthcheck.c", "gate.c"):     # the image's two small static helpers
        shutil.copyfile(dockerfile.parent / name, context / name)
    if variant == "cuda":                 # pre-included by nvcc 11.x (images/cuda-compat.cuh says why)
        shutil.copyfile(dockerfile.parent / CUDA_COMPAT, context / CUDA_COMPAT)
    how = f"cross-compiled for {platform_of(variant)}, " if is_cross(variant) else ""
    progress(f"build {tag} from {source.origin} (SHA-256 {source.sha256[:12]}...), {how}"
             f"builder {buildargs.get('BUILDER', REGISTRY_BUILDER if variant != 'cuda' else 'the CUDA devel image')}")
    limits = {"cpusetcpus": cpuset} if (cpuset := os.environ.get("LLAMA_SUPERVISOR_BUILD_CPUSET")) else None
    tail: list[str] = []
    with engine_errors("build", tag):      # the engine went away mid-build
        try:
            stream = client.api.build(
                path=str(context), dockerfile="Dockerfile", tag=tag, buildargs=buildargs, decode=True,
                rm=True, forcerm=True, nocache=no_cache, container_limits=limits,
            )
            for chunk in stream:
                if "error" in chunk:
                    raise BuildError(
                        f"building {tag} failed: {chunk['error'].strip()}{hint}\n"
                        + "\n".join(tail[-20:])
                    )
                text = (chunk.get("stream") or chunk.get("status") or "").rstrip()
                for line in text.splitlines():
                    tail = (tail + [line])[-40:]
                    progress(line)
        except docker.errors.APIError as e:
            raise BuildError(f"building {tag} failed: {e}{hint}") from e
    try:
        record = derive(client, tag, built_at=_now())
    except ImageMismatch as e:
        raise BuildError(
            f"built {tag}, but {e}; the lock is left as it was: fix images/Dockerfile and build again"
        ) from e
    return replace(record, builder=buildargs.get("BUILDER", ""),
                   builder_id=_image_id(client, buildargs.get("BUILDER", "")),
                   arm_arch=(arm_arch or DEFAULT_ARM_ARCH) if variant == "arm64" else "")


def build_args(client: docker.DockerClient, variant: str, source: SourceTarball, *,
               builder: str | None = None, arm_arch: str | None = None,
               cuda_arch: str | None = None) -> dict[str, str]:
    """The Dockerfile's build-args for `variant`: the local builder base when there is one (the offline
    CUDA base for cuda), the empty arm64 base for a cross build, ARM_ARCH for arm64 and
    CUDA_ARCHITECTURES for cuda."""
    buildargs = {
        "VARIANT": variant,
        "SOURCE_SHA256": source.sha256,
        "LLAMA_BUILD_NUMBER": str(source.build_number),
        "LLAMA_BUILD_COMMIT": source.commit,
    }
    if arm_arch is not None and variant != "arm64":
        raise BuildError(f"--cpu {arm_arch} is for the arm64 variant (it sets its -march), not {variant}")
    if variant == "cuda":
        if not cuda_arch:
            raise BuildError("a cuda image needs CMAKE_CUDA_ARCHITECTURES: pass --cuda-arch (one architecture, "
                             "e.g. 90 for an H100), or build on a host where nvidia-ml-py sees the GPU")
        builder = builder or (LOCAL_CUDA_BUILDER if _has_image(client, LOCAL_CUDA_BUILDER) else None)
        if builder:
            buildargs["BUILDER"] = builder
        buildargs["CUDA_ARCHITECTURES"] = cuda_arch
        return buildargs
    local = LOCAL_CROSS_BUILDER.get(variant, LOCAL_BUILDER) if is_cross(variant) else LOCAL_BUILDER
    builder = builder or (local if _has_image(client, local) else None)
    if builder:
        buildargs["BUILDER"] = builder
    if is_cross(variant):
        from supervisor.artifacts import platform_base

        buildargs["RUNTIME_BASE"] = platform_base.ensure(client, platform_of(variant))
    if variant == "arm64":
        arch = arm_arch or DEFAULT_ARM_ARCH
        if not ARM_ARCH.fullmatch(arch):
            raise BuildError(f"--cpu {arch!r} is not an -march value: use e.g. armv8-a (NEON), "
                             "armv8.2-a+dotprod, or armv8.6-a (NEON, dotprod and i8mm)")
        if arch != DEFAULT_ARM_ARCH:      # the default is the Dockerfile's own: its layer cache stays valid
            buildargs["ARM_ARCH"] = arch
    return buildargs


def _image_id(client: docker.DockerClient, ref: str) -> str:
    """The ID of a local image ('' when `ref` is empty or absent: a registry builder pulled by the build)."""
    if not ref:
        return ""
    with engine_errors("inspect image", ref, hint=ENGINE_HINT):
        try:
            return str(client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            return ""


def _context_dir(source: SourceTarball, context: Path | None = None) -> Path:
    """A context that holds source.tar.gz (hard-linked when possible); build adds the Dockerfile and healthcheck.c."""
    context = context or paths.state_dir() / "build-context" / source.sha256
    context.mkdir(parents=True, exist_ok=True)
    target = context / "source.tar.gz"
    if not target.exists():
        try:
            os.link(source.path, target)
        except OSError:
            shutil.copyfile(source.path, target)
    return context


def _has_image(client: docker.DockerClient, ref: str) -> bool:
    with engine_errors("inspect image", ref, hint=ENGINE_HINT):
        try:
            client.images.get(ref)
            return True
        except docker.errors.ImageNotFound:
            return False


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


# --- deriving a record from an image ------------------------------------------------------

FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def parse_help_flags(help_text: str) -> frozenset[str]:
    """Every flag llama-server --help lists: the flag column of lines that start with '-'.

    A line looks like `-c,    --ctx-size N    size of the prompt context`; the
    flag column ends at the first run of two spaces not preceded by a comma.
    """
    flags: set[str] = set()
    for line in help_text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("-"):
            continue
        parts = re.split(r"\s{2,}", stripped)
        column = parts[0]
        for part in parts[1:]:            # "-h,    --help": a trailing comma continues the column
            if not column.endswith(","):
                break
            column += " " + part
        flags.update(FLAG.findall(column))
    return frozenset(flags)


# Words in a flag's help text that mark it as unsafe to expose: llama.cpp writes "do not enable in
# untrusted environments" beside --agent, --tools, --mcp-servers-*, --ui-mcp-proxy.
WARNING = re.compile(r"\b(untrusted|unsafe|insecure|dangerous|security)\b", re.IGNORECASE)


def parse_help_warnings(help_text: str) -> frozenset[str]:
    """Every spelling of each flag whose --help entry (its line and the indented lines under it) warns
    against untrusted environments: refused in extra_args whatever the allowlist says."""
    warned: set[str] = set()
    entry: list[str] = []
    for line in [*help_text.splitlines(), ""]:
        if entry and line[:1].isspace():
            entry.append(line)
            continue
        if entry and WARNING.search(" ".join(entry)):
            warned.update(parse_help_flags(entry[0]))
        entry = [line] if line.startswith("-") and not line.startswith("---") else []
    return frozenset(warned)


def parse_help(help_text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(flags, warned_flags) of one --help text: what the lock records."""
    return parse_help_flags(help_text), parse_help_warnings(help_text)


PROBED = ("binary_sha256", "version", "compiler", "flags", "warned_flags", "toolchain")
OPTIONAL = ("compiler", "toolchain")     # compared only when the lock records them     # the fields read through a container


@dataclass(frozen=True)
class Derived:
    """What could be read from an image: its record, and why each field that could not be read is missing.

    A missing field keeps its empty value in `record`. `engine_error` is set when
    the engine, not the image, failed while the probed fields were read.
    """

    record: ImageRecord
    unknown: dict[str, str] = field(default_factory=dict)
    engine_error: SupervisorError | None = None


def get_image(client: docker.DockerClient, ref: str, *, variant: str = "") -> Image:
    with engine_errors("inspect image", ref, hint=ENGINE_HINT):
        try:
            return client.images.get(ref)
        except docker.errors.ImageNotFound as e:
            build = "llama-supervisorctl build" + (f" {variant}" if variant else "")
            raise ImageMismatch(f"image {ref} is not present: build it with '{build}'") from e


def _from_metadata(image: Image, ref: str, built_at: str) -> ImageRecord:
    """The fields that need no container: the ID under the tag and the image's labels."""
    labels = image.labels or {}
    build = labels.get("io.llama-supervisor.llama-build", "")
    return ImageRecord(
        variant=labels.get("io.llama-supervisor.variant", ""),
        tag=ref,
        image_id=str(image.id),
        binary_sha256="",
        version="",
        build_number=int(build) if build.isdigit() else 0,
        flags=frozenset(),
        source_sha256=labels.get("io.llama-supervisor.source-sha256", ""),
        built_at=built_at or str(image.attrs.get("Created", "")),
        architecture=str(image.attrs.get("Architecture", "")),
    )


def _output(probe: ImageProbe, image_id: str, arg: str) -> str:
    ran = probe.run(image_id, BINARY, [arg])
    if ran.exit_code != 0:
        raise ImageMismatch(f"'llama-server {arg}' exited {ran.exit_code}: {ran.last_line()}")
    return ran.output


def derive_all(client: docker.DockerClient, ref: str, *, built_at: str = "",
               probe: ImageProbe | None = None) -> Derived:
    """Everything the lock records, read from the image now, as far as it can be read.

    ImageMismatch only when there is no image under `ref`; a binary that is
    missing, fails or hangs leaves its fields unknown, with the reason.
    """
    image = get_image(client, ref)
    record = _from_metadata(image, ref, built_at)
    probe = probe or ImageProbe(client)
    image_id = record.image_id
    readers: dict[tuple[str, ...], Callable[[], tuple[object, ...]]] = {   # fields -> their values
        ("binary_sha256",): lambda: (probe.file_sha256(image_id, BINARY),),
        ("version", "compiler"): lambda: version_facts(_output(probe, image_id, "--version").strip()),
        ("flags", "warned_flags"): lambda: parse_help(_output(probe, image_id, "--help")),
        ("toolchain",): lambda: (parse_toolchain(probe.read_file(image_id, TOOLCHAIN, entrypoint=BINARY)),),
    }
    values: dict[str, object] = {}
    unknown: dict[str, str] = {}
    engine_error: SupervisorError | None = None
    for names, read in readers.items():
        why = ""
        if engine_error is not None:
            why = "not read: the engine failed"
        elif "binary_sha256" in unknown:
            why = f"not run: {unknown['binary_sha256']}"
        else:
            try:
                values.update(zip(names, read(), strict=True))
            except ImageMismatch as e:
                why = str(e)
            except RetryableError as e:
                engine_error = e
                why = f"not read: {e}"
        unknown.update(dict.fromkeys(names, why) if why else {})
    return Derived(replace(record, **values), unknown, engine_error)  # type: ignore[arg-type]


def derive(client: docker.DockerClient, ref: str, *, built_at: str = "") -> ImageRecord:
    """The complete record (for the lock); ImageMismatch naming every field that could not be read."""
    derived = derive_all(client, ref, built_at=built_at)
    if derived.engine_error is not None:
        raise derived.engine_error
    if derived.unknown:
        reasons = dict.fromkeys(derived.unknown.values())          # in order, each once
        raise ImageMismatch(f"{ref}: {'; '.join(reasons)}")
    return derived.record


def binary_sha256(client: docker.DockerClient, image_id: str) -> str:
    """SHA-256 of the llama-server binary, read from a created (never started) inspect container."""
    return ImageProbe(client).file_sha256(image_id, BINARY)


def version_facts(text: str) -> tuple[str, str]:
    """(version line, compiler) of `llama-server --version`: its 'built with X for Y' line gives 'X for Y'."""
    built = next((line.strip() for line in text.splitlines() if line.startswith("built with ")), "")
    return version_line(text), built.removeprefix("built with ")


def parse_toolchain(data: bytes | None) -> tuple[str, ...]:
    """The 'package version' lines of the image's toolchain.txt, sorted; () for an image built before it existed."""
    if data is None:
        return ()
    return tuple(sorted({" ".join(line.split()) for line in data.decode(errors="replace").splitlines() if line.strip()}))


def version_line(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("version:"):
            return line.strip()
    return text.splitlines()[-1].strip() if text else ""


def differences(expected: ImageRecord, derived: Derived) -> list[str]:
    """lock.compare's lines ('field: lock X, image Y'); a field that could not be read says why."""
    lines: dict[str, str] = {}
    for line in compare(expected, derived.record):
        name = line.split(":", 1)[0]
        lines[name] = line + "(none)" if line.endswith(", image ") else line
    for name, why in derived.unknown.items():
        if name in OPTIONAL and not getattr(expected, name):
            continue                      # a lock that predates the field: nothing to compare (lock.compare)
        sets = {"flags": f"{len(expected.flags)} flags", "warned_flags": f"{len(expected.warned_flags)} flags",
                "toolchain": f"{len(expected.toolchain)} packages"}
        locked = sets.get(name, getattr(expected, name))
        lines[name] = f"{name}: lock {locked}, image unknown ({why})"
    order = ("image_id", "binary_sha256", "version", "build_number", "source_sha256", "variant", "compiler", "flags",
             "warned_flags", "toolchain")
    return [lines[n] for n in order if n in lines] + [v for n, v in lines.items() if n not in order]


def verify(client: docker.DockerClient, lock: ImageLock, variant: str, *,
           probe: ImageProbe | None = None) -> list[str]:
    """What differs between the lock's record for `variant` and the image under its tag.

    The fields that need no container are compared first: when they already
    differ, an engine failure while reading the rest is reported beside them
    rather than hiding them; when they match, that failure is raised.
    """
    record = lock.get(variant)
    if record is None:
        raise ImageMismatch(f"no {variant} image in the lock: run 'llama-supervisorctl build {variant}'")
    derived = derive_all(client, record.tag, probe=probe)
    diffs = differences(record, derived)
    if derived.engine_error is not None and all(d.split(":", 1)[0] in PROBED for d in diffs):
        raise derived.engine_error
    return diffs


class ImageVerifier:
    """The check before every container create: cheap, and exact.

    The tag must still name the locked image ID (a retag is refused), and the
    binary inside that image must hash as recorded. The binary hash is kept per
    image ID: layers of a given ID do not change under a running engine, and a
    re-derive costs a container create and a 20 MB copy. Engine failures come
    out as RuntimeUnavailable / RuntimeOperationError (retryable), a wrong
    image as ImageMismatch (permanent).
    """

    def __init__(self, client: docker.DockerClient, *, instance: str | None = None) -> None:
        self._client = client
        self._probe = ImageProbe(client, instance=instance)
        self._binary_ok: set[tuple[str, str]] = set()

    def check(self, record: ImageRecord) -> None:
        try:
            image = get_image(self._client, record.tag)
        except ImageMismatch as e:
            raise ImageMismatch(
                f"image {record.tag} is gone: run 'llama-supervisorctl build {record.variant}'"
            ) from e
        if image.id != record.image_id:
            raise ImageMismatch(
                f"image {record.tag} is {image.id[:19]}, but the lock has {record.image_id[:19]}: "
                f"it was rebuilt or retagged; run 'llama-supervisorctl verify {record.variant}', "
                f"then 'llama-supervisorctl build {record.variant}' if you trust it"
            )
        self.check_binary(record)

    def check_binary(self, record: ImageRecord) -> None:
        """The llama-server binary inside the image record.image_id hashes as the lock says: derived once
        per (image ID, recorded hash), since an image's layers never change under its ID."""
        key = (record.image_id, record.binary_sha256)
        if key in self._binary_ok:
            return
        try:
            actual = self._probe.file_sha256(record.image_id, BINARY)
        except ImageMismatch as e:
            raise ImageMismatch(
                f"{record.tag}: {e}: refusing to start; rebuild with 'llama-supervisorctl build {record.variant}'"
            ) from e
        if actual != record.binary_sha256:
            raise ImageMismatch(
                f"llama-server in {record.tag} has SHA-256 {actual}, the lock has {record.binary_sha256}: "
                f"refusing to start; rebuild with 'llama-supervisorctl build {record.variant}'"
            )
        self._binary_ok.add(key)
