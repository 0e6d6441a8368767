"""The checks before a start really hash what they run (issue 22's survivors at images.py and binaries.py).

ImageVerifier runs over a hand-written engine client (images.get and the few low-level API calls
the inspect container needs) that serves a tar of the binary, so the real ImageProbe hashes it;
binaries.verify_file over files in a temporary state directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.artifacts import binaries, images
from supervisor.errors import ImageMismatch
from supervisor.artifacts.lock import BinaryRecord, ImageRecord

BINARY_BYTES = b"\x7fELF llama-server as built"
IMAGE_ID = "sha256:" + "a" * 64
LOCKED = ImageRecord(
    variant="cpu-avx2", tag="llama-supervisor/llama-server:cpu-avx2", image_id=IMAGE_ID,
    binary_sha256=hashlib.sha256(BINARY_BYTES).hexdigest(), version="version: 11434 (pypi-sdist)",
    build_number=11434, flags=frozenset({"--model"}), source_sha256="c" * 64, built_at="2026-11-23T08:00:00+00:00",
)


def _tar_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclasses.dataclass
class _Image:
    id: str


class FakeEngine:
    """The docker SDK client as ImageVerifier and ImageProbe use it: one tagged image holding one binary."""

    def __init__(self, image_id: str, binary: bytes) -> None:
        self.image_id = image_id
        self.binary = binary
        self.calls: list[str] = []
        self.images = self
        self.api = self

    # client.images
    def get(self, ref: str) -> _Image:
        self.calls.append("images.get")
        return _Image(self.image_id)

    # client.api
    def create_host_config(self, **kw: Any) -> dict[str, Any]:
        return dict(kw)

    def create_container(self, image: str, **kw: Any) -> dict[str, str]:
        self.calls.append("create")
        return {"Id": "inspect-1"}

    def get_archive(self, cid: str, path: str) -> tuple[Iterator[bytes], dict[str, Any]]:
        self.calls.append("get_archive")
        return iter([_tar_of(path.rsplit("/", 1)[-1], self.binary)]), {}

    def remove_container(self, name: str, force: bool = False) -> None:
        self.calls.append("remove")


def test_the_image_check_hashes_the_binary_even_when_the_image_id_matches() -> None:
    engine = FakeEngine(IMAGE_ID, b"\x7fELF a binary swapped in under the same image ID")
    with pytest.raises(ImageMismatch, match="llama-server in .* has SHA-256 .* the lock has") as e:
        images.ImageVerifier(engine).check(LOCKED)  # type: ignore[arg-type]
    assert "llama-supervisorctl build cpu-avx2" in str(e.value)
    assert engine.calls == ["images.get", "create", "get_archive", "remove"]


def test_a_matching_binary_is_hashed_once_per_image_id() -> None:
    engine = FakeEngine(IMAGE_ID, BINARY_BYTES)
    verifier = images.ImageVerifier(engine)  # type: ignore[arg-type]
    verifier.check(LOCKED)
    verifier.check(LOCKED)
    assert engine.calls.count("get_archive") == 1 and engine.calls.count("images.get") == 2


def test_a_retagged_image_is_refused_before_any_container() -> None:
    engine = FakeEngine("sha256:" + "f" * 64, BINARY_BYTES)
    with pytest.raises(ImageMismatch, match="rebuilt or retagged"):
        images.ImageVerifier(engine).check(LOCKED)  # type: ignore[arg-type]
    assert engine.calls == ["images.get"]


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLAMA_SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _installed(tmp_path: Path) -> BinaryRecord:
    src = tmp_path / "llama-server"
    src.write_bytes(BINARY_BYTES)
    path, digest = binaries.install(src, "cpu-avx2")
    return BinaryRecord(variant="cpu-avx2", path=str(path), sha256=digest, version="v", build_number=1,
                        flags=frozenset(), source_sha256="s" * 64, built_at="", origin="native")


def test_verify_file_hashes_the_file_even_in_its_content_addressed_folder(state_dir: Path, tmp_path: Path) -> None:
    record = _installed(tmp_path)
    assert Path(record.path).parent.name.endswith(record.sha256[:12]), "install names the folder by the hash"
    binaries.verify_file(record)                                 # as installed: accepted
    Path(record.path).write_bytes(b"\x7fELF replaced after the install")
    with pytest.raises(ImageMismatch, match="has SHA-256 .* the lock has .* build --native cpu-avx2"):
        binaries.verify_file(record)
    Path(record.path).unlink()
    with pytest.raises(ImageMismatch, match="is gone"):
        binaries.verify_file(record)
