"""llama-supervisorctl validate / hardware / schema, through click's runner."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from supervisor import paths
from supervisor.cli import cmd_manifests
from supervisor.artifacts.lock import ImageLock, write_lock
from supervisor.manifest.jsonschema import schema_text

from .test_gguf import gemma_like

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> click.Group:
    monkeypatch.setenv("LLAMA_SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path / "cache"))

    @click.group()
    def group() -> None:
        pass

    cmd_manifests.register(group)
    return group


def test_validate_ok(cli: click.Group) -> None:
    result = CliRunner().invoke(cli, ["validate", str(FIXTURES / "valid")])
    assert result.exit_code == 0, result.output
    assert "2 models, 1 profiles: OK" in result.output


def test_validate_prints_every_problem_and_exits_2(cli: click.Group) -> None:
    d = FIXTURES / "unknown_key"
    result = CliRunner().invoke(cli, ["validate", str(d)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith(str(d))]
    assert [line.split(": ", 1)[0] for line in lines] == [f"{d}/model.yaml:{n}" for n in (9, 11, 12)]


def test_validate_checks_flags_when_a_lock_exists(cli: click.Group, tmp_path: Path) -> None:
    write_lock(tmp_path / "state" / "images.lock.json", ImageLock())
    result = CliRunner().invoke(cli, ["validate", str(FIXTURES / "valid")])
    assert result.exit_code == 2
    assert "which is not in the image lock (fix: run 'llama-supervisorctl build" in result.output


def test_hardware_json(cli: click.Group) -> None:
    result = CliRunner().invoke(cli, ["hardware", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["variant"] in body["runnable_variants"]
    assert body["image"] == f"{paths.image_repo()}:{body['variant']}"
    assert body["default_flags"][0] == "--threads"


def test_hardware_text(cli: click.Group) -> None:
    result = CliRunner().invoke(cli, ["hardware"])
    assert result.exit_code == 0 and "variant:" in result.output


def test_schema_print_and_write(cli: click.Group, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0 and result.output == schema_text()
    out = tmp_path / "s.json"
    result = CliRunner().invoke(cli, ["schema", "--out", str(out)])
    assert result.exit_code == 0 and out.read_text() == schema_text()


def test_validate_through_llama_supervisorctl_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from supervisor.cli import ctl

    monkeypatch.setenv("LLAMA_SUPERVISOR_STATE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        ctl.main(["validate", str(FIXTURES / "duplicate_port")])
    assert info.value.code == 2
    out = capsys.readouterr()
    assert out.out.startswith(f"{FIXTURES / 'duplicate_port'}/b.yaml:7: port 8081")
    assert "1 problem(s)" in out.err


def _chat_model(directory: Path, name: str, port: int, gguf_path: Path, extra_args: str = "[]") -> None:
    (directory / f"{name}.yaml").write_text(
        f"kind: model\nname: {name}\nsource:\n  path: {gguf_path}\n  sha256: {'a' * 64}\n"
        f"server:\n  port: {port}\n  extra_args: {extra_args}\n")


def test_validate_warns_when_a_model_has_no_chat_template_and_says_the_fix(cli: click.Group, tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    base, it = gemma_like(tmp_path / "base.gguf"), gemma_like(tmp_path / "it.gguf", chat_template="{{ x }}")
    _chat_model(d, "base", 18081, base)
    _chat_model(d, "instruct", 18082, it)
    _chat_model(d, "told", 18083, base, extra_args="[--chat-template, gemma]")
    result = CliRunner().invoke(cli, ["validate", str(d)])
    assert result.exit_code == 0, result.output       # a warning, not an error
    warnings = [line for line in result.output.splitlines() if "warning:" in line]
    assert warnings == [
        f"{d}/base.yaml:8: warning: model 'base': this model has no chat template: /v1/chat/completions will use "
        "ChatML; use /v1/completions, or add --chat-template NAME in extra_args"
    ]
    assert "3 models, 0 profiles: OK" in result.output
