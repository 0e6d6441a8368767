"""The image lock: round trip, atomic write, and what verify reports as different."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from supervisor.errors import ConfigError
from supervisor.artifacts.images import parse_help_flags, parse_help_warnings
from supervisor.artifacts.lock import BinaryRecord, ImageLock, ImageRecord, compare, read_lock, write_lock


def record(**changes: object) -> ImageRecord:
    base = ImageRecord(
        variant="cpu-avx2", tag="llama-supervisor/llama-server:cpu-avx2", image_id="sha256:" + "a" * 64,
        binary_sha256="b" * 64, version="version: 11434 (pypi-sdist)", build_number=11434,
        flags=frozenset({"--ctx-size", "-c", "--port"}), source_sha256="c" * 64, built_at="2026-11-22T04:00:00+00:00",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "images.lock.json"
    lock = ImageLock().with_record(record()).with_record(record(variant="cpu-generic", tag="t:g"))
    write_lock(path, lock)
    assert read_lock(path) == lock
    assert not list(path.parent.glob(".images.lock.*"))  # no temporary left behind
    assert '"flags": [\n' in path.read_text()            # sorted list, diff-friendly


def test_missing_lock_is_empty_and_garbage_names_the_file(tmp_path: Path) -> None:
    assert read_lock(tmp_path / "none.json") == ImageLock()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=str(bad)):
        read_lock(bad)
    bad.write_text('{"version": 99, "images": {}}')
    with pytest.raises(ConfigError, match="lock version 99"):
        read_lock(bad)


def test_identical_records_compare_clean() -> None:
    assert compare(record(), record()) == []


def test_retagged_image_shows_as_image_id_difference() -> None:
    diffs = compare(record(), record(image_id="sha256:" + "d" * 64))
    assert diffs == [f"image_id: lock sha256:{'a' * 64}, image sha256:{'d' * 64}"]


def test_changed_binary_shows_as_binary_difference() -> None:
    diffs = compare(record(), record(binary_sha256="e" * 64, image_id="sha256:" + "f" * 64))
    assert [d.split(":")[0] for d in diffs] == ["image_id", "binary_sha256"]


def test_flag_differences_name_the_flags() -> None:
    diffs = compare(record(), record(flags=frozenset({"--ctx-size", "-c", "--mlock"})))
    assert diffs == ["flags: missing ['--port'], unexpected ['--mlock']"]


HELP = """\
----- common params -----

-h,    --help, --usage                  print usage and exit
--version                               show version and build info
-t,    --threads N                      number of CPU threads to use during generation (default: -1)
                                        (env: LLAMA_ARG_THREADS)
-c,    --ctx-size N                     size of the prompt context (default: 4096, 0 = loaded from model)
-fa,   --flash-attn [on|off|auto]       set Flash Attention use ('on', 'off', or 'auto', default: 'auto')
--mlock                                 force system to keep model in RAM rather than swapping or compressing
-ctk,  --cache-type-k TYPE              KV cache data type for K
                                        allowed values: f32, f16, bf16, q8_0
--no-webui                              Disable the Web UI (default: enabled)
"""


def test_help_flags_are_the_flag_column_only() -> None:
    flags = parse_help_flags(HELP)
    assert flags == {
        "-h", "--help", "--usage", "--version", "-t", "--threads", "-c", "--ctx-size", "-fa",
        "--flash-attn", "--mlock", "-ctk", "--cache-type-k", "--no-webui",
    }


WARNING_HELP = """\
--tools TOOL1,TOOL2,...                 experimental: whether to enable built-in tools for AI agents - do not
                                        enable in UNTRUSTED environments (default: no tools)
--temp N                                temperature (default: 0.80)
-ag,   --agent, -no-ag, --no-agent      whether to enable CORS proxy and all built-in tools - do not enable in
                                        untrusted environments (default: disabled)

----- sampling params -----
--top-k N                               top-k sampling
untrusted environments: a stray line that belongs to no flag
"""


def test_help_warnings_are_the_flags_whose_own_entry_warns() -> None:
    assert parse_help_warnings(WARNING_HELP) == {"--tools", "-ag", "--agent", "-no-ag", "--no-agent"}


def test_warned_flags_round_trip_and_differ_like_any_field(tmp_path: Path) -> None:
    warned = record(warned_flags=frozenset({"--agent", "-ag"}))
    binary = BinaryRecord(variant="cpu-avx2", path="/b", sha256="d" * 64, version="v", build_number=1,
                          flags=frozenset({"--agent"}), source_sha256="c" * 64, built_at="t", origin="native",
                          warned_flags=frozenset({"--agent"}))
    path = tmp_path / "images.lock.json"
    write_lock(path, ImageLock().with_record(warned).with_binary(binary))
    assert read_lock(path) == ImageLock().with_record(warned).with_binary(binary)
    assert json.loads(path.read_text())["images"]["cpu-avx2"]["warned_flags"] == ["--agent", "-ag"]
    assert binary.as_image_record().warned_flags == {"--agent"}
    assert compare(warned, record(warned_flags=frozenset({"--agent"}))) == [
        "warned_flags: lock ['--agent', '-ag'], image ['--agent']"]


def test_a_lock_written_before_warned_flags_loads_and_verify_asks_for_a_rebuild(tmp_path: Path) -> None:
    """Old locks load (the field reads as empty: the allowlist still holds); verify reports the difference."""
    body = json.loads(ImageLock().with_record(record()).dumps())
    del body["images"]["cpu-avx2"]["warned_flags"]
    path = tmp_path / "old.lock.json"
    path.write_text(json.dumps(body))
    old = read_lock(path).images["cpu-avx2"]
    assert old.warned_flags == frozenset() and old == record()
    assert compare(old, record(warned_flags=frozenset({"--agent"}))) == [
        "warned_flags: lock none recorded, image ['--agent']"]
