"""Model verification: missing, not GGUF, wrong hash are refused; the hash is kept while the file is unchanged."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.artifacts import modelsrc
from supervisor.errors import FetchError, ModelMismatch
from supervisor.manifest.schema import ModelSource


def gguf(path: Path, body: bytes = b"\x03\x00\x00\x00weights") -> str:
    path.write_bytes(b"GGUF" + body)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_good_file_passes(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    digest = gguf(f)
    modelsrc.check_model(f, digest)


def test_missing_file_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(ModelMismatch, match="missing: run 'llama-supervisorctl fetch-model'"):
        modelsrc.check_model(tmp_path / "absent.gguf", "0" * 64)


def test_not_gguf_is_refused_before_hashing(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ModelMismatch, match="not a GGUF file"):
        modelsrc.check_model(f, hashlib.sha256(f.read_bytes()).hexdigest())


def test_wrong_hash_names_both(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    actual = gguf(f)
    with pytest.raises(ModelMismatch) as e:
        modelsrc.check_model(f, "1" * 64)
    assert actual in str(e.value) and "1" * 64 in str(e.value)


def test_verifier_rehashes_only_after_the_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    digest = gguf(f)
    verifier = modelsrc.ModelVerifier()
    verifier.check(f, digest)
    # Same bytes length, different content, new mtime: must be re-hashed and refused.
    f.write_bytes(b"GGUF" + b"\x03\x00\x00\x00weighTs")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(ModelMismatch, match="SHA-256"):
        verifier.check(f, digest)


def test_verifier_refuses_a_file_the_container_user_cannot_read(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    digest = gguf(f)
    f.chmod(0o600)
    with pytest.raises(ModelMismatch, match="chmod a\\+r"):
        modelsrc.ModelVerifier().check(f, digest)
    f.chmod(0o644)
    modelsrc.ModelVerifier().check(f, digest)


def test_verifier_refuses_a_file_removed_after_a_good_check(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    digest = gguf(f)
    verifier = modelsrc.ModelVerifier()
    verifier.check(f, digest)
    f.unlink()
    with pytest.raises(ModelMismatch, match="missing"):
        verifier.check(f, digest)


def test_fetch_of_a_missing_path_source_is_refused(tmp_path: Path) -> None:
    src = ModelSource(sha256="0" * 64, path=str(tmp_path / "x.gguf"))
    with pytest.raises(ModelMismatch, match="never fetched"):
        modelsrc.fetch(src)


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_from_a_url_verifies_before_the_file_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_dir: tuple[Path, str]
) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path / "cache"))
    root, base = http_dir
    digest = gguf(root / "tiny.gguf", b"\x03\x00\x00\x00" + b"w" * (3 << 20))
    lines: list[str] = []
    got = modelsrc.fetch(ModelSource(sha256=digest, url=f"{base}/tiny.gguf"), progress=lines.append)
    assert got == modelsrc.cache_path(digest, "tiny.gguf")
    assert got.read_bytes() == (root / "tiny.gguf").read_bytes()
    assert any("MiB (33%)" in line for line in lines) and any(line.endswith("3 MiB, done") for line in lines), lines
    wrong = ModelSource(sha256="2" * 64, url=f"{base}/tiny.gguf")
    with pytest.raises(ModelMismatch, match="SHA-256"):
        modelsrc.fetch(wrong)
    assert not modelsrc.cache_path("2" * 64, "tiny.gguf").exists()  # nothing unverified is left in place


def test_fetch_from_a_missing_url_is_a_fetch_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_dir: tuple[Path, str]
) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path / "cache"))
    _, base = http_dir
    with pytest.raises(FetchError, match="could not download .*404"):
        modelsrc.fetch(ModelSource(sha256="3" * 64, url=f"{base}/absent.gguf"))
