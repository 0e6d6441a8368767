"""Build llama-server image variants through the docker SDK, record them, verify them.

`build` prepares a context holding only the verified source tarball, streams
the build log as progress, then derives the image's lock record from the image
itself: ID, SHA-256 of the llama-server binary, `--version`, the flags its
`--help` lists. `derive` does the same for verify, so a retagged image or a
changed binary shows up as a field that differs from the lock.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import docker
import docker.errors
from docker.models.images import Image

from supervisor import paths
from supervisor.errors import BuildError, ImageMismatch, RuntimeUnavailable
from supervisor.hashing import sha256_chunks
from supervisor.lock import ImageLock, ImageRecord, compare
from supervisor.source import SourceTarball

Progress = Callable[[str], None]

BINARY = "/usr/local/bin/llama-server"
LOCAL_BUILDER = "llama-supervisor/builder:bookworm"   # made by scripts/make-base-images

CPU_VARIANTS = ("cpu-generic", "cpu-avx2", "cpu-avx512", "arm64")
VARIANTS = (*CPU_VARIANTS, "cuda")
ARCH = {"arm64": "arm64"}  # everything else is amd64


def tag_for(variant: str) -> str:
    return f"{paths.image_repo()}:{variant}"


def images_dir() -> Path:
    """images/ of this checkout, else the copy a non-editable install put under <prefix>/share."""
    candidates = [
        Path(os.environ["LLAMA_SUPERVISOR_IMAGES_DIR"]) if os.environ.get("LLAMA_SUPERVISOR_IMAGES_DIR") else None,
        Path(__file__).resolve().parent.parent / "images",
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
    except docker.errors.DockerException as e:
        raise RuntimeUnavailable(
            f"cannot reach the Docker engine ({e}): start it (systemctl start docker) "
            "or set DOCKER_HOST, and make sure this user may use its socket"
        ) from e


def build(
    client: docker.DockerClient,
    variant: str,
    source: SourceTarball,
    *,
    progress: Progress,
    builder: str | None = None,
    no_cache: bool = False,
) -> ImageRecord:
    """Build one variant from a verified tarball and return its lock record.

    no_cache rebuilds every layer (to time a cold build); normally the layer
    cache makes an unchanged rebuild take about a second.
    """
    dockerfile = dockerfile_for(variant)
    context = _context_dir(source)
    buildargs = {
        "VARIANT": variant,
        "SOURCE_SHA256": source.sha256,
        "LLAMA_BUILD_NUMBER": str(source.build_number),
        "LLAMA_BUILD_COMMIT": source.commit,
    }
    if variant != "cuda":
        builder = builder or (LOCAL_BUILDER if _has_image(client, LOCAL_BUILDER) else None)
        if builder:
            buildargs["BUILDER"] = builder
    shutil.copyfile(dockerfile, context / "Dockerfile")
    shutil.copyfile(dockerfile.parent / "healthcheck.c", context / "healthcheck.c")
    progress(f"build {tag_for(variant)} from {source.origin} (SHA-256 {source.sha256[:12]}...)")
    tail: list[str] = []
    try:
        stream = client.api.build(
            path=str(context), dockerfile="Dockerfile", tag=tag_for(variant),
            buildargs=buildargs, decode=True, rm=True, forcerm=True, nocache=no_cache,
            platform=f"linux/{ARCH.get(variant, 'amd64')}" if variant == "arm64" else None,
        )
        for chunk in stream:
            if "error" in chunk:
                raise BuildError(
                    f"building {tag_for(variant)} failed: {chunk['error'].strip()}\n"
                    + "\n".join(tail[-20:])
                )
            text = (chunk.get("stream") or chunk.get("status") or "").rstrip()
            for line in text.splitlines():
                tail = (tail + [line])[-40:]
                progress(line)
    except docker.errors.APIError as e:
        raise BuildError(f"building {tag_for(variant)} failed: {e}") from e
    return derive(client, tag_for(variant), built_at=_now())


def _context_dir(source: SourceTarball) -> Path:
    """A context that holds source.tar.gz (hard-linked when possible); build adds the Dockerfile and healthcheck.c."""
    context = paths.state_dir() / "build-context" / source.sha256
    context.mkdir(parents=True, exist_ok=True)
    target = context / "source.tar.gz"
    if not target.exists():
        try:
            os.link(source.path, target)
        except OSError:
            shutil.copyfile(source.path, target)
    return context


def _has_image(client: docker.DockerClient, ref: str) -> bool:
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


def _run(client: docker.DockerClient, image_id: str, args: list[str]) -> str:
    try:
        out = client.containers.run(
            image_id, args, remove=True, network_disabled=True, read_only=True,
            cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
            stdout=True, stderr=True, mem_limit="512m",
        )
    except docker.errors.ContainerError as e:  # --version exits 0; anything else is a broken image
        raise ImageMismatch(f"{image_id[:19]}: llama-server {' '.join(args)} failed: {e}") from e
    return out.decode(errors="replace") if isinstance(out, bytes) else str(out)


def binary_sha256(client: docker.DockerClient, image_id: str) -> str:
    """SHA-256 of the llama-server binary, read from a created (never started) container."""
    container = client.containers.create(image_id, network_disabled=True)
    try:
        stream, _ = container.get_archive(BINARY)
        blob = b"".join(stream)
    finally:
        container.remove(force=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        member = tar.getmember(os.path.basename(BINARY))
        f = tar.extractfile(member)
        if f is None:
            raise ImageMismatch(f"{image_id[:19]}: {BINARY} is not a regular file")
        return sha256_chunks(iter(lambda: f.read(1 << 20), b""))


def derive(client: docker.DockerClient, ref: str, *, built_at: str = "") -> ImageRecord:
    """Everything the lock records, read from the image now."""
    try:
        image: Image = client.images.get(ref)
    except docker.errors.ImageNotFound as e:
        raise ImageMismatch(f"image {ref} is not present: build it with 'llama-supervisorctl build'") from e
    labels = image.labels or {}
    version = _run(client, image.id, ["--version"]).strip()
    help_text = _run(client, image.id, ["--help"])
    return ImageRecord(
        variant=labels.get("io.llama-supervisor.variant", ""),
        tag=ref,
        image_id=image.id,
        binary_sha256=binary_sha256(client, image.id),
        version=_version_line(version),
        build_number=int(labels.get("io.llama-supervisor.llama-build", "0") or 0),
        flags=parse_help_flags(help_text),
        source_sha256=labels.get("io.llama-supervisor.source-sha256", ""),
        built_at=built_at or str(image.attrs.get("Created", "")),
        architecture=str(image.attrs.get("Architecture", "")),
    )


def _version_line(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("version:"):
            return line.strip()
    return text.splitlines()[-1].strip() if text else ""


def verify(client: docker.DockerClient, lock: ImageLock, variant: str) -> list[str]:
    """What differs between the lock's record for `variant` and the image under its tag."""
    record = lock.get(variant)
    if record is None:
        raise ImageMismatch(f"no {variant} image in the lock: run 'llama-supervisorctl build {variant}'")
    actual = derive(client, record.tag)
    return compare(record, actual)


class ImageVerifier:
    """The check before every container create: cheap, and exact.

    The tag must still name the locked image ID (a retag is refused), and the
    binary inside that image must hash as recorded. The binary hash is kept per
    image ID: layers of a given ID do not change under a running engine, and a
    re-derive costs a container create and a 20 MB copy.
    """

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self._binary_ok: set[tuple[str, str]] = set()

    def check(self, record: ImageRecord) -> None:
        try:
            image = self._client.images.get(record.tag)
        except docker.errors.ImageNotFound as e:
            raise ImageMismatch(
                f"image {record.tag} is gone: run 'llama-supervisorctl build {record.variant}'"
            ) from e
        if image.id != record.image_id:
            raise ImageMismatch(
                f"image {record.tag} is {image.id[:19]}, but the lock has {record.image_id[:19]}: "
                f"it was rebuilt or retagged; run 'llama-supervisorctl verify {record.variant}', "
                f"then 'llama-supervisorctl build {record.variant}' if you trust it"
            )
        key = (record.image_id, record.binary_sha256)
        if key in self._binary_ok:
            return
        actual = binary_sha256(self._client, record.image_id)
        if actual != record.binary_sha256:
            raise ImageMismatch(
                f"llama-server in {record.tag} has SHA-256 {actual}, the lock has {record.binary_sha256}: "
                f"refusing to start; rebuild with 'llama-supervisorctl build {record.variant}'"
            )
        self._binary_ok.add(key)
