"""How verify words what differs, that inspect containers are never models, and engine errors at the edge.

The engine-error tests use a real docker SDK client pointed at a socket that does
not exist: no engine is needed, and every call fails the way an absent engine does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import docker
import pytest

from supervisor.artifacts import images
from supervisor.runtime.docker.verifier import LockVerifier
from supervisor.errors import ImageMismatch, RuntimeUnavailable
from supervisor.artifacts.lock import ImageLock, ImageRecord, write_lock
from supervisor.artifacts.probe import ImageProbe
from supervisor.runtime import LABEL_MODEL, inspect_labels, owned_filter

from .helpers import desired

LOCKED = ImageRecord(
    variant="cpu-avx2", tag="llama-supervisor/llama-server:cpu-avx2", image_id="sha256:" + "a" * 64,
    binary_sha256="b" * 64, version="version: 11434 (pypi-sdist)", build_number=11434,
    flags=frozenset({"--model", "--port", "--ctx-size"}), source_sha256="c" * 64,
    built_at="2026-11-23T08:00:00+00:00",
)


def _builder_like() -> ImageRecord:
    """What derive reads from an image without labels or binary: only the ID."""
    return dataclasses.replace(LOCKED, variant="", image_id="sha256:" + "d" * 64, binary_sha256="",
                               version="", build_number=0, flags=frozenset(), source_sha256="")


def test_every_field_of_a_wrong_image_is_named_and_unreadable_ones_say_why() -> None:
    why = "no /usr/local/bin/llama-server in the image"
    derived = images.Derived(_builder_like(), {"binary_sha256": why, "version": f"not run: {why}",
                                               "flags": f"not run: {why}"})
    assert images.differences(LOCKED, derived) == [
        f"image_id: lock {LOCKED.image_id}, image sha256:{'d' * 64}",
        f"binary_sha256: lock {'b' * 64}, image unknown ({why})",
        f"version: lock version: 11434 (pypi-sdist), image unknown (not run: {why})",
        "build_number: lock 11434, image 0",
        f"source_sha256: lock {'c' * 64}, image (none)",
        "variant: lock cpu-avx2, image (none)",
        f"flags: lock 3 flags, image unknown (not run: {why})",
    ]


def test_a_field_that_could_not_be_read_is_reported_even_when_the_lock_holds_it_empty() -> None:
    locked = dataclasses.replace(LOCKED, version="")
    derived = images.Derived(dataclasses.replace(LOCKED, version=""),
                             {"version": "'llama-server --version' exited 1: boom"})
    assert images.differences(locked, derived) == [
        "version: lock , image unknown ('llama-server --version' exited 1: boom)"]


def test_a_matching_image_has_no_differences() -> None:
    assert images.differences(LOCKED, images.Derived(LOCKED)) == []


@pytest.mark.parametrize("instance", ["default", "blue", None])
def test_no_daemon_label_filter_matches_an_inspect_container(instance: str | None) -> None:
    labels = inspect_labels("sha256:" + "e" * 64, instance=instance)
    for daemon_instance in ("default", "blue"):
        wanted = [f.split("=", 1) for f in owned_filter(daemon_instance)]
        assert not all(labels.get(k) == v for k, v in wanted), (labels, daemon_instance)
    assert labels[LABEL_MODEL] == "" and labels["io.llama-supervisor.purpose"] == "inspect"
    assert labels["io.llama-supervisor.instance"] == (instance or "")


@pytest.fixture
def absent_engine() -> docker.DockerClient:
    # An explicit API version: constructing the client then makes no call.
    return docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41", timeout=5)


def test_the_daemons_image_check_says_the_engine_is_unreachable_and_is_retryable(
    absent_engine: docker.DockerClient, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeUnavailable, match="systemctl start docker") as e:
        images.ImageVerifier(absent_engine).check(LOCKED)
    assert e.value.retryable and e.value.exit_code == 4
    assert isinstance(e.value.__cause__, Exception) and not isinstance(e.value.__cause__, ImageMismatch)


def test_verify_and_the_probe_translate_an_absent_engine(absent_engine: docker.DockerClient) -> None:
    with pytest.raises(RuntimeUnavailable, match="DOCKER_HOST"):
        images.verify(absent_engine, ImageLock().with_record(LOCKED), LOCKED.variant)
    with pytest.raises(RuntimeUnavailable, match="engine unreachable"):
        ImageProbe(absent_engine).file_sha256(LOCKED.image_id, images.BINARY)
    with pytest.raises(RuntimeUnavailable, match="engine unreachable"):
        ImageProbe(absent_engine).run(LOCKED.image_id, images.BINARY, ["--version"])


def test_lock_verifier_passes_engine_errors_on_as_retryable(absent_engine: docker.DockerClient,
                                                            tmp_path: Path) -> None:
    locked = dataclasses.replace(LOCKED, image_id=desired("m").spec.image_id)
    lock = tmp_path / "images.lock.json"
    write_lock(lock, ImageLock().with_record(locked))
    with pytest.raises(RuntimeUnavailable) as e:
        LockVerifier(absent_engine, lock, instance="blue").check_image(desired("m"))
    assert e.value.retryable


class _Images:
    def get(self, ref: str) -> object:
        return type("Image", (), {"id": "sha256:" + "a" * 64, "labels": {"io.llama-supervisor.variant": "cpu-avx2"},
                                  "attrs": {"Created": "t", "Architecture": "amd64"}})()


class _Probe:
    """ImageProbe's two calls: the binary hashes as locked; --help prints `help` and exits `code`."""

    def __init__(self, help_text: str, code: int = 0) -> None:
        self.help_text, self.code = help_text, code

    def file_sha256(self, image_id: str, path: str) -> str:
        return "b" * 64

    def run(self, image_id: str, entrypoint: str, args: list[str]) -> object:
        from supervisor.artifacts.probe import Ran

        if args == ["--version"]:
            return Ran(0, "version: 11434 (pypi-sdist)\nbuilt with GNU 12.2.0 for Linux aarch64\n")
        return Ran(self.code, self.help_text)

    def read_file(self, image_id: str, path: str, *, entrypoint: str, max_bytes: int = 0) -> bytes | None:
        assert path == images.TOOLCHAIN
        return b"g++-12-aarch64-linux-gnu 12.2.0-14cross1\ncmake 3.25.1-1\n\ncmake  3.25.1-1\n"


HELP = ("--tools TOOLS    experimental: built-in tools - do not enable in untrusted environments\n"
        "--temp N         temperature\n")


def test_derive_records_the_flags_whose_help_warns_and_a_failed_help_leaves_both_sets_unknown() -> None:
    client = type("Client", (), {"images": _Images()})()
    derived = images.derive_all(client, "t", probe=_Probe(HELP))  # type: ignore[arg-type]
    assert derived.unknown == {}
    assert derived.record.flags == {"--tools", "--temp"} and derived.record.warned_flags == {"--tools"}
    assert derived.record.compiler == "GNU 12.2.0 for Linux aarch64"
    assert derived.record.toolchain == ("cmake 3.25.1-1", "g++-12-aarch64-linux-gnu 12.2.0-14cross1")
    failed = images.derive_all(client, "t", probe=_Probe("boom", code=1))  # type: ignore[arg-type]
    assert set(failed.unknown) == {"flags", "warned_flags"}
    assert images.differences(dataclasses.replace(LOCKED, warned_flags=frozenset({"--tools"})), failed)[-2:] == [
        "flags: lock 3 flags, image unknown ('llama-server --help' exited 1: boom)",
        "warned_flags: lock 1 flags, image unknown ('llama-server --help' exited 1: boom)"]


def test_a_checkout_builds_from_its_own_images_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a copy a past install left under <venv>/share: a fresh clone has none (seen when the module
    moved into artifacts/ and its parent.parent stopped being the checkout)."""
    from supervisor.artifacts import images

    monkeypatch.delenv("LLAMA_SUPERVISOR_IMAGES_DIR", raising=False)
    assert images.images_dir() == Path(__file__).resolve().parents[2] / "images"
