"""The image lock: what each built image variant was, recorded at build time.

A JSON file (default: <state dir>/images.lock.json), one record per variant.
`verify` re-derives every field from the local image and compares; the flags
set is what manifests are checked against (a flag the image's llama-server
does not know is a validation error), and `warned_flags` holds the flags whose
`--help` text warns against untrusted environments (refused in extra_args
whatever the allowlist says). A lock written before `warned_flags` existed
reads it as empty; `verify` then reports the difference, and a rebuild (about
a second from the layer cache) records it. A second section, `binaries`, records
the host binaries the process runtime runs (compiled natively or taken out of
a locked image), with the same facts keyed by variant. Each image record also
keeps where it was pushed (`pushed`: one registry, repository and digest per
registry, written by `llama-supervisorctl push`), and a third section,
`manifest_lists`, the multi-architecture lists pushed over them. Pure: reading and writing the file is
the only I/O here, and comparisons are plain functions.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Self

from supervisor.artifacts.hashing import FileIdentity, identity
from supervisor.errors import ConfigError

# Which section of the lock render renders models against: "images" (Docker) or "binaries" (host processes,
# each variant's binary seen as its image: ImageLock.for_process). A runtime's adapter names its view.
LockView = Literal["images", "binaries"]
LOCK_VIEWS: tuple[LockView, ...] = ("images", "binaries")

LOCK_VERSION = 1

_SETS = ("flags", "warned_flags")
_TUPLES = ("toolchain",)          # lists in the file, tuples in the record (a frozen record stays hashable)


class _FlagSetsJson:
    """to_json/from_json of a record dataclass whose flag sets are written as sorted lists (a diff-friendly
    file) and read back as frozensets; a lock written before warned_flags existed reads it as empty."""

    def to_json(self) -> dict[str, object]:
        return {k: sorted(v) if k in _SETS else v for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Self:
        tuples = {k: tuple(d[k]) for k in _TUPLES if k in d}
        return cls(**{**d, **{k: frozenset(d.get(k) or ()) for k in _SETS}, **tuples})


@dataclass(frozen=True)
class Pushed:
    """Where an image record's image was pushed: one per registry, by content digest."""

    registry: str                    # HOST:PORT, as given to `push --registry`
    repository: str                  # <registry>/<path>, e.g. 127.0.0.1:5000/llama-supervisor/llama-server
    digest: str                      # sha256:... of the manifest the registry holds (its config is the image ID)
    pushed_at: str                   # ISO 8601, UTC

    @property
    def ref(self) -> str:
        """The reference that pulls exactly this image: <repository>@sha256:..."""
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class ManifestList:
    """A multi-architecture manifest list pushed over variants' per-architecture manifests."""

    registry: str
    repository: str
    tag: str
    digest: str                      # of the list itself
    variants: tuple[str, ...]        # one per architecture, each with its own `pushed` digest
    pushed_at: str

    @property
    def ref(self) -> str:
        return f"{self.repository}@{self.digest}"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ManifestList:
        return cls(**{**d, "variants": tuple(d.get("variants") or ())})


@dataclass(frozen=True)
class ImageRecord(_FlagSetsJson):
    variant: str                     # cpu-generic | cpu-avx2 | cpu-avx512 | arm64 | cuda
    tag: str                         # llama-supervisor/llama-server:<variant>
    image_id: str                    # sha256:...
    binary_sha256: str               # of /usr/local/bin/llama-server inside the image
    version: str                     # `llama-server --version`, e.g. "version: 11434 (pypi-sdist)"
    build_number: int
    flags: frozenset[str]            # every --flag / -f its --help lists
    source_sha256: str
    built_at: str                    # ISO 8601, UTC
    architecture: str = "amd64"
    warned_flags: frozenset[str] = frozenset()   # flags whose --help text warns against untrusted environments
    # How it was built (issue 19: reproducible builds). Empty in a lock written before these existed.
    compiler: str = ""               # what `--version` says it was built with, e.g. "GNU 12.2.0 for Linux aarch64"
    toolchain: tuple[str, ...] = ()  # "package version" of each Debian package that made the binary
    builder: str = ""                # the builder base image (BUILDER build-arg; '' = the Dockerfile's default)
    builder_id: str = ""             # its image ID when it was local at build time
    arm_arch: str = ""               # the arm64 build's -march (armv8-a unless --cpu said otherwise)
    pushed: tuple[Pushed, ...] = ()  # registries holding this image by digest (`push`), sorted by registry

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        if not self.pushed:
            del body["pushed"]           # a lock of images never pushed reads as it did before `push` existed
        return body

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Self:
        record = super().from_json({k: v for k, v in d.items() if k != "pushed"})
        return replace(record, pushed=tuple(Pushed(**p) for p in d.get("pushed") or ()))

    def pushed_to(self, registry: str) -> Pushed | None:
        return next((p for p in self.pushed if p.registry == registry), None)

    def with_pushed(self, pushed: Pushed) -> ImageRecord:
        """This record with `pushed` replacing any earlier push to the same registry."""
        others = [p for p in self.pushed if p.registry != pushed.registry]
        return replace(self, pushed=tuple(sorted([*others, pushed], key=lambda p: p.registry)))


BINARY_ID_PREFIX = "binary-sha256:"


@dataclass(frozen=True)
class BinaryRecord(_FlagSetsJson):
    """A llama-server binary on the host, for the process runtime."""

    variant: str
    path: str                        # absolute path of the binary (under the state dir)
    sha256: str                      # of the file; checked before every launch
    version: str
    build_number: int
    flags: frozenset[str]
    source_sha256: str
    built_at: str
    origin: str                      # "native" (compiled here) or "image:<image ID>" (taken out of it)
    architecture: str = "amd64"
    warned_flags: frozenset[str] = frozenset()

    @property
    def binary_id(self) -> str:
        """What a ContainerSpec's image_id holds for a process: the binary's content address."""
        return BINARY_ID_PREFIX + self.sha256

    def as_image_record(self) -> ImageRecord:
        """The view render needs (flags, version, ID): a process spec is rendered like a container's."""
        return ImageRecord(
            variant=self.variant, tag=self.path, image_id=self.binary_id, binary_sha256=self.sha256,
            version=self.version, build_number=self.build_number, flags=self.flags,
            source_sha256=self.source_sha256, built_at=self.built_at, architecture=self.architecture,
            warned_flags=self.warned_flags,
        )


@dataclass(frozen=True)
class ImageLock:
    images: dict[str, ImageRecord] = field(default_factory=dict)
    binaries: dict[str, BinaryRecord] = field(default_factory=dict)
    manifest_lists: dict[str, ManifestList] = field(default_factory=dict)   # "<repository>:<tag>" -> list

    def get(self, variant: str) -> ImageRecord | None:
        return self.images.get(variant)

    def with_record(self, record: ImageRecord) -> ImageLock:
        """The lock with `record` for its variant. A rebuild that gave the same image ID keeps the earlier
        record's pushes (the registries hold that very image); a different ID drops them."""
        old = self.images.get(record.variant)
        if old is not None and old.image_id == record.image_id and not record.pushed:
            record = replace(record, pushed=old.pushed)
        return replace(self, images={**self.images, record.variant: record})

    def with_binary(self, record: BinaryRecord) -> ImageLock:
        return replace(self, binaries={**self.binaries, record.variant: record})

    def with_manifest_list(self, entry: ManifestList) -> ImageLock:
        return replace(self, manifest_lists={**self.manifest_lists, f"{entry.repository}:{entry.tag}": entry})

    def binary_by_id(self, binary_id: str) -> BinaryRecord | None:
        return next((b for b in self.binaries.values() if b.binary_id == binary_id), None)

    def for_process(self) -> ImageLock:
        """The lock as render sees it under the process runtime: each variant is its host binary."""
        return ImageLock({k: b.as_image_record() for k, b in self.binaries.items()}, self.binaries,
                         self.manifest_lists)

    def view(self, name: LockView) -> ImageLock:
        """The lock as render sees it under a runtime whose adapter names `name` (RuntimeAdapter.lock_view)."""
        if name == "images":
            return self
        if name == "binaries":
            return self.for_process()
        raise ConfigError(f"lock view {name!r}: use one of {', '.join(LOCK_VIEWS)}")

    def dumps(self) -> str:
        body: dict[str, object] = {
            "version": LOCK_VERSION,
            "images": {k: v.to_json() for k, v in sorted(self.images.items())},
        }
        if self.binaries:
            body["binaries"] = {k: v.to_json() for k, v in sorted(self.binaries.items())}
        if self.manifest_lists:
            body["manifest_lists"] = {k: asdict(v) for k, v in sorted(self.manifest_lists.items())}
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def loads(cls, text: str, *, origin: str = "<lock>") -> ImageLock:
        try:
            body = json.loads(text)
            if body.get("version") != LOCK_VERSION:
                raise ValueError(f"lock version {body.get('version')!r}, expected {LOCK_VERSION}")
            return cls({k: ImageRecord.from_json(v) for k, v in body["images"].items()},
                       {k: BinaryRecord.from_json(v) for k, v in (body.get("binaries") or {}).items()},
                       {k: ManifestList.from_json(v) for k, v in (body.get("manifest_lists") or {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(
                f"{origin}: not a valid image lock ({e}); rebuild it with 'llama-supervisorctl build'"
            ) from e


def read_lock(path: Path) -> ImageLock:
    """The lock at `path`; an empty lock when the file does not exist yet."""
    if not path.exists():
        return ImageLock()
    return ImageLock.loads(path.read_text(), origin=str(path))


class LockReader:
    """read_lock, parsed again only when the file's identity changed (write_lock renames a new file over it,
    so every write is a new inode; an edit in place changes mtime and ctime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: FileIdentity | None = None
        self._lock = ImageLock()

    def read(self) -> ImageLock:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._key = None
            return ImageLock()
        with os.fdopen(fd, "rb") as f:
            key = identity(os.fstat(fd))
            if key != self._key:
                self._lock = ImageLock.loads(f.read().decode(), origin=str(self.path))
                self._key = key
        return self._lock


def write_lock(path: Path, lock: ImageLock) -> None:
    """Atomic: write a temporary file beside it, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".images.lock.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(lock.dumps())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compare(expected: ImageRecord, actual: ImageRecord) -> list[str]:
    """Every field that differs, as 'field: lock X, image Y' (empty: they match)."""
    diffs: list[str] = []
    for name in ("image_id", "binary_sha256", "version", "build_number", "source_sha256", "variant"):
        a, b = getattr(expected, name), getattr(actual, name)
        if a != b:
            diffs.append(f"{name}: lock {a}, image {b}")
    if expected.flags != actual.flags:
        missing = sorted(expected.flags - actual.flags)[:5]
        extra = sorted(actual.flags - expected.flags)[:5]
        diffs.append(f"flags: missing {missing}, unexpected {extra}")
    if expected.warned_flags != actual.warned_flags:
        diffs.append(f"warned_flags: lock {sorted(expected.warned_flags) or 'none recorded'},"
                     f" image {sorted(actual.warned_flags)}")
    # A lock written before compiler and toolchain were recorded has them empty: nothing to compare.
    if expected.compiler and expected.compiler != actual.compiler:
        diffs.append(f"compiler: lock {expected.compiler}, image {actual.compiler}")
    if expected.toolchain and expected.toolchain != actual.toolchain:
        diffs.append(f"toolchain: lock {', '.join(sorted(set(expected.toolchain) - set(actual.toolchain))) or 'none'},"
                     f" image {', '.join(sorted(set(actual.toolchain) - set(expected.toolchain))) or 'none'}")
    return diffs
