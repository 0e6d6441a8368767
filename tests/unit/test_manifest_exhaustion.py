"""A runaway or hostile manifest directory is refused cheaply (docs/SECURITY.md, 'Resource exhaustion'):
big files, thousands of files, huge lists; one short problem each, never thousands of lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.errors import ManifestError
from supervisor.manifest import load_dir

SHA = "a" * 64


def model(name: str, port: int, extra: int = 0) -> str:
    text = f"kind: model\nname: {name}\nsource: {{path: /srv/m.gguf, sha256: {SHA}}}\nserver:\n  port: {port}\n"
    if extra:
        text += "  extra_args:\n" + "".join(f"    - --alias{i}\n" for i in range(extra))
    return text


def problems(d: Path) -> list[str]:
    with pytest.raises(ManifestError) as e:
        load_dir(d)
    return e.value.problems


def test_a_1_mib_manifest_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    text = model("big", 9000, extra=70000)[: 1024 * 1024 - 16]
    (tmp_path / "big.yaml").write_text(text[: text.rfind("\n") + 1])
    [p] = problems(tmp_path)
    assert p.startswith(f"{tmp_path / 'big.yaml'}:1: file is ") and "byte limit" in p


def test_a_long_extra_args_list_is_one_problem_not_one_per_item(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(model("m", 9000, extra=200))
    [p] = problems(tmp_path)
    assert f"{tmp_path / 'm.yaml'}:6: server.extra_args" in p and "128" in p


def test_thousands_of_manifest_files_are_refused_as_one_problem(tmp_path: Path) -> None:
    for i in range(1001):
        (tmp_path / f"m{i}.yaml").write_text(model(f"m{i}", 10000 + i))
    [p] = problems(tmp_path)
    assert "1001 manifest files, more than 1000" in p


def test_the_directory_has_a_total_byte_budget(tmp_path: Path) -> None:
    for i in range(12):                                    # 12 x 200 KiB: each under the per-file limit
        (tmp_path / f"m{i:02}.yaml").write_text(model(f"m{i}", 10000 + i) + "#" * (200 * 1024) + "\n")
    [p] = problems(tmp_path)
    assert "add up to more than" in p
