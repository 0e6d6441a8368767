"""Issue 22: survivors of the manifest loader's file reading (`load_dir`): the size bound exactly at
its limit, a file that cannot be read, and one that turns out longer than its size said (a growing
file; procfs files say 0 bytes). Linux's /proc stands in for the last two, as a symlink in the
manifest directory: a real file the loader meets, not a patched one."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.errors import ManifestError
from supervisor.manifest import load_dir
from supervisor.manifest.loader import MAX_FILE_BYTES

from .test_survivors_manifest import model


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_dir(path)
    return info.value.problems


def test_a_manifest_of_exactly_the_size_limit_loads_whole(tmp_path: Path) -> None:
    text = model("last-byte-counts", 8001) + "aliases: [last]"        # no newline: the last byte is `]`
    padding = "#" * (MAX_FILE_BYTES - len(text) - 1) + "\n"
    (tmp_path / "m.yaml").write_text(padding + text)
    assert (tmp_path / "m.yaml").stat().st_size == MAX_FILE_BYTES
    loaded = load_dir(tmp_path)
    assert list(loaded.models) == ["last-byte-counts"], "the file was cut or refused at its limit"
    assert loaded.models["last-byte-counts"].aliases == ("last",)


def _proc(name: str) -> Path:
    path = Path("/proc") / name
    if not path.exists():
        pytest.skip(f"{path} is not there (not Linux with procfs)")
    return path


def test_a_manifest_file_that_cannot_be_read_is_a_problem_at_line_1(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(model("a", 8001))
    (tmp_path / "x.yaml").symlink_to(_proc("self/mem"))        # a regular file; reading offset 0 is EIO
    assert problems_of(tmp_path) == [
        f"{tmp_path}/x.yaml:1: cannot read the file: Input/output error (fix: check its permissions)"]


def test_a_file_longer_than_its_size_said_is_refused_past_the_limit(tmp_path: Path) -> None:
    kallsyms = _proc("kallsyms")                               # says 0 bytes, holds megabytes
    if kallsyms.stat().st_size != 0 or len(kallsyms.read_bytes()[: MAX_FILE_BYTES + 1]) <= MAX_FILE_BYTES:
        pytest.skip("/proc/kallsyms is not a short-sized long file here")
    (tmp_path / "good.yaml").write_text(model("a", 8001))
    (tmp_path / "grows.yaml").symlink_to(kallsyms)
    assert problems_of(tmp_path) == [
        f"{tmp_path}/grows.yaml:1: file is over the {MAX_FILE_BYTES} byte limit (fix: split it)"]
