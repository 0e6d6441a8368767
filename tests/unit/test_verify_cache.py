"""Checks before every launch stay exact when their results are kept (issue 17 §4: crash -> healthy).

The binary's hash is kept per file identity (device, inode, size, mtime_ns, ctime_ns), the lock's parse
per file identity, the image's binary per image ID: any change re-verifies. A start in place is
verified without looking up the image's tag (the container runs its image by ID), and with no Docker
call at all once the image ID's binary was hashed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from supervisor.artifacts import binaries
from supervisor.artifacts.hashing import HashCache
from supervisor.artifacts.lock import BinaryRecord, ImageLock, LockReader, write_lock
from supervisor.errors import ImageMismatch, ModelMismatch
from supervisor.runtime.docker.verifier import LockVerifier
from supervisor.runtime.process.verifier import BinaryVerifier

from .helpers import desired
from .test_survivors_images import BINARY_BYTES, IMAGE_ID, LOCKED, FakeEngine


def test_a_file_is_hashed_once_while_it_is_unchanged(tmp_path: Path) -> None:
    f = tmp_path / "llama-server"
    f.write_bytes(b"one")
    hashes = HashCache()
    assert hashes.sha256_path(f) == hashlib.sha256(b"one").hexdigest()
    assert hashes.sha256_path(f) == hashlib.sha256(b"one").hexdigest()
    assert hashes.hashed == 1


def test_a_write_of_the_same_size_is_hashed_again(tmp_path: Path) -> None:
    f = tmp_path / "llama-server"
    f.write_bytes(b"one")
    hashes = HashCache()
    hashes.sha256_path(f)
    st = f.stat()
    with f.open("r+b") as w:                    # same size, and mtime put back as it was
        w.write(b"two")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hashes.sha256_path(f) == hashlib.sha256(b"two").hexdigest()   # ctime moved: read again
    assert hashes.hashed == 2


def test_a_file_renamed_over_is_hashed_again(tmp_path: Path) -> None:
    f, new = tmp_path / "llama-server", tmp_path / "new"
    f.write_bytes(b"one")
    hashes = HashCache()
    hashes.sha256_path(f)
    new.write_bytes(b"evil")
    os.replace(new, f)
    assert hashes.sha256_path(f) == hashlib.sha256(b"evil").hexdigest()


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    hashes = HashCache(limit=2)
    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(bytes([i]))
        hashes.sha256_path(files[-1])
    hashes.sha256_path(files[0])                  # the oldest went
    assert hashes.hashed == 4


def test_the_lock_is_parsed_again_only_when_it_changed(tmp_path: Path) -> None:
    path = tmp_path / "images.lock.json"
    reader = LockReader(path)
    assert reader.read().images == {}             # none yet: an empty lock
    write_lock(path, ImageLock().with_record(LOCKED))
    first = reader.read()
    assert first.get("cpu-avx2") == LOCKED and reader.read() is first
    write_lock(path, ImageLock())
    assert reader.read().images == {}


def _binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BinaryRecord:
    monkeypatch.setenv("LLAMA_SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    src = tmp_path / "llama-server"
    src.write_bytes(BINARY_BYTES)
    path, digest = binaries.install(src, "cpu-avx2")
    return BinaryRecord(variant="cpu-avx2", path=str(path), sha256=digest, version="v", build_number=1,
                        flags=frozenset(), source_sha256="s" * 64, built_at="", origin="native")


def _model(tmp_path: Path, image_id: str) -> object:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF a model")
    f.chmod(0o644)
    d = desired("m")
    spec = dataclasses.replace(d.spec, model_sha256=hashlib.sha256(b"GGUF a model").hexdigest(), image_id=image_id)
    return dataclasses.replace(d, model_path=str(f), spec=spec)


def test_the_process_verifier_reads_the_binary_once_and_again_after_a_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = _binary(tmp_path, monkeypatch)
    lock = tmp_path / "images.lock.json"
    write_lock(lock, ImageLock().with_binary(record))
    hashes = HashCache()
    verifier = BinaryVerifier(lock, hashes)
    d = _model(tmp_path, record.binary_id)
    verifier.check_image(d)
    verifier.check_start(d)
    verifier.check_start(d)
    assert hashes.hashed == 1
    Path(record.path).chmod(0o755)
    Path(record.path).write_bytes(b"\x7fELF replaced after the install")
    with pytest.raises(ImageMismatch, match="has SHA-256 .* the lock has"):
        verifier.check_start(d)


def test_the_process_verifier_checks_the_model_before_a_start_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = _binary(tmp_path, monkeypatch)
    lock = tmp_path / "images.lock.json"
    write_lock(lock, ImageLock().with_binary(record))
    verifier = BinaryVerifier(lock)
    d = _model(tmp_path, record.binary_id)
    verifier.check_start(d)
    Path(d.model_path).write_bytes(b"GGUF another model")      # type: ignore[attr-defined]
    with pytest.raises(ModelMismatch, match="SHA-256"):
        verifier.check_start(d)


def test_a_docker_start_in_place_checks_model_and_image_binary_without_the_tag(tmp_path: Path) -> None:
    engine = FakeEngine(IMAGE_ID, BINARY_BYTES)
    lock = tmp_path / "images.lock.json"
    write_lock(lock, ImageLock().with_record(LOCKED))
    verifier = LockVerifier(engine, lock)
    d = _model(tmp_path, IMAGE_ID)
    verifier.check_start(d)                                    # type: ignore[arg-type]
    assert engine.calls == ["create", "get_archive", "remove"]  # the binary, once per image ID; no tag lookup
    engine.calls.clear()
    verifier.check_start(d)                                    # type: ignore[arg-type]
    assert engine.calls == []                                  # nothing to ask Docker again
    verifier.check_image(d)                                    # type: ignore[arg-type]
    assert engine.calls == ["images.get"]                      # a create still checks the tag
    Path(d.model_path).write_bytes(b"GGUF another model")      # type: ignore[attr-defined]
    with pytest.raises(ModelMismatch, match="SHA-256"):
        verifier.check_start(d)                                # type: ignore[arg-type]


def test_a_start_in_place_of_an_image_no_longer_locked_is_refused(tmp_path: Path) -> None:
    engine = FakeEngine(IMAGE_ID, BINARY_BYTES)
    lock = tmp_path / "images.lock.json"
    write_lock(lock, ImageLock().with_record(LOCKED))
    verifier = LockVerifier(engine, lock)
    d = _model(tmp_path, IMAGE_ID)
    verifier.check_start(d)                                    # type: ignore[arg-type]
    write_lock(lock, ImageLock())                              # the lock rewritten without it
    with pytest.raises(ImageMismatch, match="is not in"):
        verifier.check_start(d)                                # type: ignore[arg-type]
