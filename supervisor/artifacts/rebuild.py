"""Reproducibility: rebuild a locked variant from nothing and compare it with the lock, and the published
expected binary SHA-256 of each variant (images/expected-sha256.json).

`rebuild` builds the variant again with no layer cache, in a fresh build context, under a tag of its own
(the locked image and its tag are left alone), derives its record and compares it with the lock. Where the
binary differs it says which step most likely broke reproducibility: the source, the builder's toolchain, or
the compile itself, and where `diffoscope` is installed, which parts of the two binaries differ.

`check_expected` compares a record with the published SHA-256, but only when its source and toolchain are
those the figure was recorded with: another toolchain is expected to give another binary, and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import docker
import docker.errors

from supervisor import paths
from supervisor.artifacts import images
from supervisor.artifacts.lock import ImageLock, ImageRecord
from supervisor.artifacts.probe import ImageProbe
from supervisor.artifacts.source import SourceTarball
from supervisor.errors import ConfigError, ImageMismatch

EXPECTED_FILE = "expected-sha256.json"
# What a rebuild must reproduce; image_id is reported but never required (see docs/IMAGES.md).
REPRODUCED = ("binary_sha256", "version", "compiler", "build_number", "source_sha256", "variant", "flags",
              "warned_flags", "toolchain")
DIFFOSCOPE_TIMEOUT_S = 300
DIFFOSCOPE_LINES = 40


@dataclass(frozen=True)
class Rebuilt:
    """A rebuild compared with the lock: what differs (empty: reproduced), and a hint at the step when the
    binary differs. same_image: the image ID too is the locked one; same_layers: the image's file system
    layers are (their diff IDs; the ID can still differ by the config's creation times)."""

    record: ImageRecord
    differences: tuple[str, ...]
    hint: str
    same_image: bool
    same_layers: bool


def rebuild_tag(variant: str) -> str:
    return f"{paths.image_repo()}:{variant}-rebuild"


def rebuild(client: docker.DockerClient, lock: ImageLock, variant: str, source: SourceTarball, *,
            progress: images.Progress, diffoscope: str | None = None, keep: bool = False) -> Rebuilt:
    """Build `variant` again from nothing and compare it with its lock record (ImageMismatch: none)."""
    locked = lock.get(variant)
    if locked is None:
        raise ImageMismatch(f"no {variant} image in the lock: run 'llama-supervisorctl build {variant}' first")
    if source.sha256 != locked.source_sha256:
        raise ConfigError(f"the lock's {variant} was built from source {locked.source_sha256[:12]}..., this source is "
                          f"{source.sha256[:12]}...: pass the same --source (and --sha256) as the build")
    tag = rebuild_tag(variant)
    with tempfile.TemporaryDirectory(prefix="rebuild-", dir=_tmp_parent()) as tmp:
        record = images.build(client, variant, source, progress=progress, no_cache=True, tag=tag,
                              context=Path(tmp) / "context", builder=locked.builder or None,
                              arm_arch=locked.arm_arch or None)
        diffs = differences(locked, record)
        hint = ""
        if any(d.startswith("binary_sha256:") for d in diffs):
            hint = step_hint(locked, record)
            found = diffoscope or shutil.which("diffoscope")
            if found:
                hint += "\n" + diffoscope_report(client, locked, record, Path(tmp), found)
            else:
                hint += "\n(install diffoscope to see which parts of the two binaries differ)"
    same_layers = layers(client, record.image_id) == layers(client, locked.image_id)
    if not keep:
        _untag(client, tag)
    return Rebuilt(record, tuple(diffs), hint, record.image_id == locked.image_id, same_layers)


def layers(client: docker.DockerClient, image_id: str) -> tuple[str, ...]:
    """The diff IDs of an image's layers (() when the image is gone)."""
    try:
        return tuple(client.images.get(image_id).attrs.get("RootFS", {}).get("Layers") or ())
    except docker.errors.ImageNotFound:
        return ()


def differences(locked: ImageRecord, rebuilt: ImageRecord) -> list[str]:
    """Every field a rebuild must reproduce that it did not, as 'field: lock X, rebuild Y'."""
    out: list[str] = []
    for name in REPRODUCED:
        a, b = getattr(locked, name), getattr(rebuilt, name)
        if a == b:
            continue
        if isinstance(a, (frozenset, tuple)):
            gone = sorted(set(a) - set(b))[:5]
            new = sorted(set(b) - set(a))[:5]
            out.append(f"{name}: only in the lock {gone or 'nothing'}, only in the rebuild {new or 'nothing'}")
        else:
            out.append(f"{name}: lock {a or '(not recorded)'}, rebuild {b or '(none)'}")
    return out


def step_hint(locked: ImageRecord, rebuilt: ImageRecord) -> str:
    """Which step of images/Dockerfile most likely made the binary differ, from the records alone."""
    if locked.source_sha256 != rebuilt.source_sha256:
        return "step: the source (another tarball was built)"
    if not locked.toolchain:
        return ("step: unknown: the lock records no toolchain (it predates toolchain.txt); "
                "build once more with 'llama-supervisorctl build' and rebuild again to compare like with like")
    if locked.toolchain != rebuilt.toolchain or locked.compiler != rebuilt.compiler:
        return ("step: the builder base (its toolchain packages changed, see 'toolchain' above: "
                f"the lock was built with builder {locked.builder or images.REGISTRY_BUILDER} {locked.builder_id[:19]}, "
                f"this rebuild with {rebuilt.builder or images.REGISTRY_BUILDER} {rebuilt.builder_id[:19]})")
    return ("step: the compile (RUN cmake ... in images/Dockerfile's build stage): the same source and toolchain "
            "gave another binary, so something of the build host or time leaked in")


def diffoscope_report(client: docker.DockerClient, locked: ImageRecord, rebuilt: ImageRecord, tmp: Path,
                      diffoscope: str) -> str:
    """The first lines of diffoscope's text report on the two llama-server binaries (the locked image's must
    still be present)."""
    probe = ImageProbe(client)
    a, b = tmp / "lock" / "llama-server", tmp / "rebuild" / "llama-server"
    try:
        for image_id, dest in ((locked.image_id, a), (rebuilt.image_id, b)):
            dest.parent.mkdir(parents=True, exist_ok=True)
            data = probe.read_file(image_id, images.BINARY, entrypoint=images.BINARY, max_bytes=1 << 30)
            if data is None:
                return f"diffoscope: no {images.BINARY} in {image_id[:19]}"
            dest.write_bytes(data)
    except ImageMismatch as e:
        return f"diffoscope: could not read the locked binary ({e})"
    try:
        ran = subprocess.run([diffoscope, "--text", "-", "--no-progress", str(a), str(b)], capture_output=True,
                             text=True, timeout=DIFFOSCOPE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"diffoscope: no report within {DIFFOSCOPE_TIMEOUT_S} s"
    lines = ran.stdout.splitlines()
    sections = sorted({line.split("readelf --wide --decompress --hex-dump=", 1)[1].split()[0]
                       for line in lines if "--hex-dump=" in line})
    head = "\n".join(lines[:DIFFOSCOPE_LINES])
    return (f"diffoscope: sections that differ: {', '.join(sections) or '(see below)'}\n{head}"
            + (f"\n... ({len(lines) - DIFFOSCOPE_LINES} more lines)" if len(lines) > DIFFOSCOPE_LINES else ""))


def _untag(client: docker.DockerClient, tag: str) -> None:
    """Drop the rebuild's tag (its layers stay in the cache until pruned, like any build's)."""
    try:
        client.images.remove(tag, noprune=True)
    except docker.errors.APIError:
        pass


def _tmp_parent() -> Path:
    parent = paths.state_dir() / "rebuild"
    parent.mkdir(parents=True, exist_ok=True)
    return parent


# --- the published expected SHA-256 -------------------------------------------------------------------------


class Expected(Enum):
    MATCH = "match"                  # the binary is the published one
    DIFFERS = "differs"              # same source and toolchain, another binary: not reproducible
    OTHER_TOOLCHAIN = "other toolchain"   # not comparable: another source, toolchain or -march
    UNPUBLISHED = "unpublished"      # no figure for this variant


@dataclass(frozen=True)
class Verdict:
    status: Expected
    message: str


def expected_path() -> Path:
    return images.images_dir() / EXPECTED_FILE


def read_expected(path: Path | None = None) -> dict[str, dict[str, object]]:
    path = path or expected_path()
    try:
        body = json.loads(path.read_text())
        variants = body["variants"]
        if not isinstance(variants, dict):
            raise TypeError("'variants' is not an object")
        return variants
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a valid expected-SHA-256 file ({e}): restore it from the repository") from e


def entry(record: ImageRecord) -> dict[str, object]:
    """What images/expected-sha256.json publishes for a variant: the binary's SHA-256 and what it depends on."""
    return {"binary_sha256": record.binary_sha256, "source_sha256": record.source_sha256,
            "compiler": record.compiler, "toolchain": list(record.toolchain), "arm_arch": record.arm_arch,
            "architecture": record.architecture, "version": record.version}


def check_expected(record: ImageRecord, published: dict[str, dict[str, object]]) -> Verdict:
    """The record's binary against the published SHA-256 of its variant, when they are comparable."""
    want = published.get(record.variant)
    if want is None:
        return Verdict(Expected.UNPUBLISHED, f"{record.variant}: no expected SHA-256 is published")
    mine = entry(record)
    other = [k for k in ("source_sha256", "compiler", "toolchain", "arm_arch") if want.get(k) != mine[k]]
    if other:
        detail = "; ".join(f"{k}: published {_short(want.get(k))}, here {_short(mine[k])}" for k in other)
        return Verdict(Expected.OTHER_TOOLCHAIN,
                       f"{record.variant}: not comparable with the published SHA-256 ({detail})")
    if want.get("binary_sha256") == record.binary_sha256:
        return Verdict(Expected.MATCH, f"{record.variant}: binary {record.binary_sha256} is the published one")
    return Verdict(Expected.DIFFERS,
                   f"{record.variant}: binary {record.binary_sha256}, published {want.get('binary_sha256')} "
                   "for the same source and toolchain: this build is not reproducible")


def _short(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "none"
    return str(value or "none")
