"""The arm64 image (issue 19): cross-built on this host, read and served under emulation.

On an x86-64 host the arm64 variant is cross-compiled (the builder base with
crossbuild-essential-arm64 that scripts/make-base-images makes) into a
linux/arm64 image, and runs through qemu-user-static's binfmt entry. `make test`
builds it first (`make image-arm64`: a cold cross build on a fresh machine, about
one more image build); the fixture builds it again through the same call as
`llama-supervisorctl build arm64`, from the layer cache, and records it in the
lock. Its --version and --help
are read by running the arm64 binary under qemu; the daemon then starts it for
the demo model and it answers /health and a completion. The binary is checked
against the SHA-256 published in images/expected-sha256.json when the source and
toolchain are the ones it was recorded with (otherwise the test says why it
cannot compare). The full no-cache rebuild is `make reproduce`, not part of this.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from supervisor import paths
from supervisor.artifacts import hardware, images, rebuild, source
from supervisor.artifacts.lock import ImageRecord, read_lock, write_lock
from supervisor.artifacts.probe import ImageProbe

from .daemon_harness import Daemon, completion_speeds, container, free_port, healthy, model_yaml, remove_models, wait_for

EM_AARCH64 = 0xB7           # ELF e_machine of AArch64
LOAD_TIMEOUT = 600.0        # a model load under instruction emulation, on a busy 2-core host
# `make test` builds the image first (make image-arm64), so the fixture's build comes from the layer
# cache; run alone on a fresh machine, the first test also pays the cold cross build (23 min here on
# 2 cores shared with a benchmark), which pyproject's 600 s per test would cut short.
COLD_BUILD_TIMEOUT = 3600

pytestmark = [pytest.mark.docker, pytest.mark.arm64, pytest.mark.timeout(COLD_BUILD_TIMEOUT)]


@pytest.fixture(scope="module")
def arm64(docker_client: docker.DockerClient) -> ImageRecord:
    """The arm64 image, built (from the layer cache when it is there) and recorded in the lock."""
    host = hardware.detect()
    if "arm64" not in hardware.runnable_variants(host):
        message = f"arm64 images cannot run here: {hardware.missing_for('arm64', host)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    src = source.resolve(None, progress=lambda _: None)
    started = time.monotonic()
    record = images.build(docker_client, "arm64", src, progress=lambda _: None)
    took = time.monotonic() - started
    write_lock(paths.lock_path(), read_lock(paths.lock_path()).with_record(record))
    print(f"\narm64: built {record.tag} {record.image_id[:19]} in {took:.1f} s; binary {record.binary_sha256}")
    return record


def test_the_arm64_image_is_linux_arm64_with_an_aarch64_binary(
    docker_client: docker.DockerClient, arm64: ImageRecord
) -> None:
    image = docker_client.images.get(arm64.tag)
    assert (image.attrs["Os"], image.attrs["Architecture"]) == ("linux", "arm64")
    assert arm64.architecture == "arm64" and arm64.arm_arch == images.DEFAULT_ARM_ARCH
    binary = ImageProbe(docker_client).read_file(arm64.image_id, images.BINARY, entrypoint=images.BINARY,
                                                 max_bytes=1 << 30)
    assert binary is not None and binary[:4] == b"\x7fELF"
    assert int.from_bytes(binary[18:20], "little") == EM_AARCH64
    assert b"/src/llama.cpp/" not in binary, "a build path is in the binary: -ffile-prefix-map did not apply"
    assert arm64.compiler.endswith("for Linux aarch64"), arm64.compiler
    if images.is_cross("arm64"):
        assert any(line.startswith("g++-12-aarch64-linux-gnu ") for line in arm64.toolchain), arm64.toolchain


def test_a_second_build_comes_from_the_layer_cache(docker_client: docker.DockerClient, arm64: ImageRecord) -> None:
    started = time.monotonic()
    again = images.build(docker_client, "arm64", source.resolve(None, progress=lambda _: None),
                         progress=lambda _: None)
    took = time.monotonic() - started
    assert again.image_id == arm64.image_id and again.binary_sha256 == arm64.binary_sha256
    assert took < 120, f"a cached arm64 build took {took:.0f} s"


def test_binary_facts_read_under_emulation_match_the_same_source_on_this_host(
    arm64: ImageRecord, image_record: ImageRecord
) -> None:
    """--version and --help ran as arm64 code (qemu): the same source lists the same flags as the host's image."""
    assert arm64.version == image_record.version and arm64.build_number == image_record.build_number
    assert arm64.flags == image_record.flags
    assert arm64.warned_flags == image_record.warned_flags
    assert {"--ctx-size", "--threads", "--model", "--port"} <= arm64.flags


def test_the_binary_is_the_published_one_when_the_toolchain_matches(arm64: ImageRecord) -> None:
    verdict = rebuild.check_expected(arm64, rebuild.read_expected())
    print(f"\n{verdict.message}")
    if verdict.status is rebuild.Expected.OTHER_TOOLCHAIN:
        pytest.skip(verdict.message)
    assert verdict.status is rebuild.Expected.MATCH, verdict.message


@pytest.fixture
def served(tmp_path: Path, docker_client: docker.DockerClient, arm64: ImageRecord,
           demo_model: Path) -> Iterator[tuple[str, int, Daemon]]:
    name = f"arm{uuid.uuid4().hex[:6]}"
    port = free_port()
    text = model_yaml(name, port, demo_model, demo_model.parent.name, memory="1g").replace(
        "profile: auto", "profile: arm")
    (tmp_path / f"{name}.yaml").write_text(text)
    (tmp_path / "arm.yaml").write_text("kind: profile\nname: arm\nvariant: arm64\n")
    d = Daemon(tmp_path).start()
    try:
        yield name, port, d
    finally:
        if d.proc and d.proc.poll() is None:
            d.terminate()
        remove_models(docker_client, [name])


def test_the_daemon_serves_the_demo_model_from_the_arm64_image_under_emulation(
    served: tuple[str, int, Daemon], docker_client: docker.DockerClient, arm64: ImageRecord
) -> None:
    name, port, d = served
    started = time.monotonic()

    def up() -> bool:
        # FATAL ends the wait at once: the daemon gave up (its start budget, render's emulated default).
        fatal = d.find(lambda e: e.get("model") == name and e.get("to") == "FATAL")
        assert fatal is None, f"{name} went FATAL under emulation: {fatal[1].get('reason')}"
        return healthy(port, timeout=2)

    try:
        wait_for(up, LOAD_TIMEOUT, f"{name} healthy under emulation", step=0.5)
    except AssertionError:
        print(d.dump())
        raise
    loaded = time.monotonic() - started
    assert container(docker_client, name).attrs["Image"] == arm64.image_id
    speeds, body = completion_speeds(port, 16, timeout=300)
    print(f"\narm64 under qemu: healthy {loaded:.1f} s after the daemon started; generation "
          f"{statistics.median(speeds):.1f} tok/s (median of 3 x 16 tokens, 1 thread); {body['content']!r}")
