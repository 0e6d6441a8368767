"""Reproducible builds and the cross build's base (issue 19), the parts without an engine.

The empty linux/arm64 base is the same bytes every time; a rebuild's record is compared field by field
with the lock and the step that most likely broke reproducibility is named; a binary is checked against
the published SHA-256 only when its source and toolchain are those it was published with; the lock keeps
the new build facts, and a lock written before them still reads and verifies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from supervisor.artifacts import images, platform_base, rebuild
from supervisor.artifacts.lock import ImageLock, ImageRecord, compare
from supervisor.errors import BuildError, ConfigError

TOOLCHAIN = ("binutils-aarch64-linux-gnu 2.40-2cross1", "cmake 3.25.1-1", "g++-12-aarch64-linux-gnu 12.2.0-14cross1")
LOCKED = ImageRecord(
    variant="arm64", tag="r/llama-server:arm64", image_id="sha256:" + "a" * 64, binary_sha256="b" * 64,
    version="version: 11434 (pypi-sdist)", build_number=11434, flags=frozenset({"--model", "--port"}),
    source_sha256="c" * 64, built_at="2026-11-29T10:00:00+00:00", architecture="arm64",
    compiler="GNU 12.2.0 for Linux aarch64", toolchain=TOOLCHAIN, builder="llama-supervisor/builder:bookworm-cross-arm64",
    builder_id="sha256:" + "e" * 64, arm_arch="armv8-a",
)


def _members(data: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar}  # type: ignore[union-attr]


def test_the_empty_arm64_base_is_the_same_bytes_every_time_and_says_arm64() -> None:
    data, image_id = platform_base.archive("linux/arm64")
    assert platform_base.archive("linux/arm64") == (data, image_id)
    members = _members(data)
    manifest = json.loads(members["manifest.json"])  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["llama-supervisor/scratch:linux-arm64"]
    config_bytes = members[manifest[0]["Config"]]
    assert config_bytes is not None and image_id == "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    config = json.loads(config_bytes)
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")
    assert config["created"] == "1970-01-01T00:00:00Z"
    layer = members[manifest[0]["Layers"][0]]
    assert layer is not None and config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        [tmp] = tar.getmembers()
    assert (tmp.name, tmp.isdir(), tmp.mode, tmp.mtime) == ("tmp", True, 0o1777, 0)


def test_an_unknown_platform_has_no_base() -> None:
    with pytest.raises(BuildError, match="no empty base for platform 'linux/riscv64'"):
        platform_base.archive("linux/riscv64")


def test_a_rebuild_that_reproduces_everything_but_the_image_id_has_no_differences() -> None:
    again = dataclasses.replace(LOCKED, image_id="sha256:" + "f" * 64, built_at="2026-11-29T11:00:00+00:00")
    assert rebuild.differences(LOCKED, again) == []


def test_a_rebuild_with_another_binary_and_toolchain_names_both_and_blames_the_builder() -> None:
    again = dataclasses.replace(LOCKED, binary_sha256="d" * 64,
                                toolchain=(*TOOLCHAIN[:2], "g++-12-aarch64-linux-gnu 12.2.0-14cross2"),
                                builder_id="sha256:" + "9" * 64)
    assert rebuild.differences(LOCKED, again) == [
        f"binary_sha256: lock {'b' * 64}, rebuild {'d' * 64}",
        "toolchain: only in the lock ['g++-12-aarch64-linux-gnu 12.2.0-14cross1'], "
        "only in the rebuild ['g++-12-aarch64-linux-gnu 12.2.0-14cross2']",
    ]
    hint = rebuild.step_hint(LOCKED, again)
    assert hint.startswith("step: the builder base") and "sha256:eeeeeeeeeeee" in hint and "sha256:999999999999" in hint


def test_the_same_toolchain_and_another_binary_blames_the_compile() -> None:
    again = dataclasses.replace(LOCKED, binary_sha256="d" * 64)
    assert rebuild.step_hint(LOCKED, again).startswith("step: the compile (RUN cmake")


def test_a_lock_without_a_toolchain_cannot_say_which_step() -> None:
    old = dataclasses.replace(LOCKED, toolchain=(), compiler="")
    again = dataclasses.replace(LOCKED, binary_sha256="d" * 64)
    assert rebuild.differences(old, again)[1:] == [
        "compiler: lock (not recorded), rebuild GNU 12.2.0 for Linux aarch64",
        f"toolchain: only in the lock nothing, only in the rebuild {sorted(TOOLCHAIN)}",
    ]
    assert rebuild.step_hint(old, again).startswith("step: unknown: the lock records no toolchain")


PUBLISHED = {"arm64": rebuild.entry(LOCKED)}


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({}, rebuild.Expected.MATCH, "is the published one"),
        ({"binary_sha256": "d" * 64}, rebuild.Expected.DIFFERS, "this build is not reproducible"),
        ({"binary_sha256": "d" * 64, "toolchain": TOOLCHAIN[1:]}, rebuild.Expected.OTHER_TOOLCHAIN,
         "toolchain: published binutils-aarch64-linux-gnu 2.40-2cross1, cmake"),
        ({"binary_sha256": "d" * 64, "compiler": "GNU 13.2.0 for Linux aarch64"}, rebuild.Expected.OTHER_TOOLCHAIN,
         "compiler: published GNU 12.2.0 for Linux aarch64, here GNU 13.2.0"),
        ({"arm_arch": "armv8.6-a"}, rebuild.Expected.OTHER_TOOLCHAIN, "arm_arch: published armv8-a, here armv8.6-a"),
        ({"source_sha256": "0" * 64}, rebuild.Expected.OTHER_TOOLCHAIN, "source_sha256"),
        ({"variant": "cpu-avx2"}, rebuild.Expected.UNPUBLISHED, "cpu-avx2: no expected SHA-256 is published"),
    ],
)
def test_a_binary_is_held_to_the_published_sha256_only_with_the_same_source_and_toolchain(
    change: dict[str, object], status: rebuild.Expected, words: str
) -> None:
    verdict = rebuild.check_expected(dataclasses.replace(LOCKED, **change), PUBLISHED)  # type: ignore[arg-type]
    assert verdict.status is status
    assert words in verdict.message


def test_the_published_file_in_the_repository_reads_and_pins_the_source() -> None:
    from supervisor.artifacts.source import PINNED

    published = rebuild.read_expected()
    assert published, "images/expected-sha256.json publishes no variant"
    for variant, want in published.items():
        assert variant in images.VARIANTS
        assert want["source_sha256"] == PINNED.sha256
        assert len(str(want["binary_sha256"])) == 64 and want["toolchain"]


def test_a_broken_published_file_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "expected-sha256.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match=f"{bad}: not a valid expected-SHA-256 file"):
        rebuild.read_expected(bad)


def test_the_lock_keeps_the_build_facts_and_reads_a_lock_written_before_them() -> None:
    lock = ImageLock({"arm64": LOCKED})
    again = ImageLock.loads(lock.dumps())
    assert again == lock and isinstance(again.images["arm64"].toolchain, tuple)
    body = json.loads(lock.dumps())
    assert body["images"]["arm64"]["toolchain"] == list(TOOLCHAIN)
    for key in ("compiler", "toolchain", "builder", "builder_id", "arm_arch"):
        del body["images"]["arm64"][key]
    old = ImageLock.loads(json.dumps(body)).images["arm64"]
    assert (old.compiler, old.toolchain, old.builder, old.arm_arch) == ("", (), "", "")


def test_compare_names_another_compiler_or_toolchain_only_when_the_lock_records_one() -> None:
    image = dataclasses.replace(LOCKED, compiler="GNU 13.2.0 for Linux aarch64", toolchain=TOOLCHAIN[1:])
    assert compare(LOCKED, image) == [
        "compiler: lock GNU 12.2.0 for Linux aarch64, image GNU 13.2.0 for Linux aarch64",
        "toolchain: lock binutils-aarch64-linux-gnu 2.40-2cross1, image none",
    ]
    assert compare(dataclasses.replace(LOCKED, compiler="", toolchain=()), image) == []


def test_the_version_output_gives_the_compiler_and_toolchain_text_is_normalised() -> None:
    text = "version: 11434 (pypi-sdist)\nbuilt with GNU 12.2.0 for Linux x86_64\n"
    assert images.version_facts(text) == ("version: 11434 (pypi-sdist)", "GNU 12.2.0 for Linux x86_64")
    assert images.version_facts("version: 1 (x)\n") == ("version: 1 (x)", "")
    assert images.parse_toolchain(None) == ()
    assert images.parse_toolchain(b"cmake  3.25.1-1\n\ng++-12 12.2.0-14\ncmake 3.25.1-1\n") == (
        "cmake 3.25.1-1", "g++-12 12.2.0-14")


@pytest.mark.parametrize("march", ["armv8-a", "armv8.2-a+dotprod", "armv8.6-a", "armv9-a+sve2+i8mm"])
def test_arm_arch_accepts_march_values(march: str) -> None:
    assert images.ARM_ARCH.fullmatch(march)


@pytest.mark.parametrize("march", ["", "native", "armv8-a\n", "armv8-a; rm -rf /", "armv8-a+DOTPROD", "x86-64-v3", "-O0"])
def test_arm_arch_refuses_anything_else(march: str) -> None:
    assert not images.ARM_ARCH.fullmatch(march)
