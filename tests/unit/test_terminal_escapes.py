"""Issue 15, item 8: terminal escapes in manifest strings (a path, a reason) and in model logs never reach the
operator's terminal through `status`, `validate` or `tail`: the CLI prints every line through one function."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from supervisor.cli import cmd_manifests
from supervisor.control.server import ControlServer
from supervisor.core.text import printable, printable_bytes

from .fakes import FakeController
from .helpers import exited_process_record
from .test_ctl_status import GEMMA, model, quiet_logs, run  # noqa: F401 (autouse fixture)

TITLE = "\x1b]0;pwned\x07"          # OSC: retitles the terminal
CLEAR = "\x1b[2J"                  # CSI: clears the screen
CLI_DIR = Path(__file__).resolve().parents[2] / "supervisor" / "cli"


def no_escapes(text: str | bytes) -> bool:
    data = text.encode() if isinstance(text, str) else text
    return not any(b in data for b in (b"\x1b", b"\x07", b"\x9b", b"\xc2\x9b", b"\r"))


def test_printable_keeps_layout_and_text() -> None:
    assert printable(f"a{TITLE}b{CLEAR}c\td\ne\x9b1m\u00e9\u4e2d\r") == "a]0;pwnedb[2Jc\td\ne1m\u00e9\u4e2d"
    assert printable_bytes(f"x{TITLE}{CLEAR}\u00e9\u009b\ty\n".encode()) == "x]0;pwned[2J\u00e9\ty\n".encode()


def test_validate_prints_a_hostile_path_without_its_escapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "m.yaml").write_text(
        "kind: model\nname: evil\nsource:\n"
        '  path: "/proc/\\x1b]0;pwned\\x07\\x1b[2J/model.gguf"\n'    # YAML escapes: the string holds ESC and BEL
        "  sha256: " + "1a" * 32 + "\nserver:\n  port: 8081\n")

    @click.group()
    def cli() -> None:
        pass

    cmd_manifests.register(cli)
    result = CliRunner().invoke(cli, ["validate", str(d)])
    assert result.exit_code == 2 and "model file /proc/]0;pwned[2J/model.gguf is under /proc" in result.output
    assert no_escapes(result.output), repr(result.output)


@pytest.fixture
def hostile_daemon(sock_dir: Path) -> FakeController:
    evil = model("evil", "FATAL", port=8083, last_exit_code=1,
                 reason=f"verification failed: model file /srv/{TITLE}{CLEAR}x.gguf is missing")
    controller = FakeController([GEMMA, evil])
    controller.log_lines = [f"hello {TITLE}\n".encode(), f"{CLEAR}world\r\n".encode(), b"\x1b[31mred\x1b[0m\n"]
    server = ControlServer(controller, sock_dir / "control.sock")
    server.start()
    yield controller
    server.close()


def test_status_renders_a_hostile_reason_without_its_escapes(hostile_daemon: FakeController, sock_dir: Path) -> None:
    code, out, err = run(sock_dir, "status")
    assert "model file /srv/]0;pwned[2Jx.gguf is missing" in out
    assert no_escapes(out + err), repr(out)
    _, one, _ = run(sock_dir, "status", "evil")
    assert no_escapes(one) and "pwned" in one


def test_tail_strips_what_a_model_prints(hostile_daemon: FakeController, sock_dir: Path) -> None:
    code, out, _ = run(sock_dir, "tail", "evil")
    assert code == 0 and out == "hello ]0;pwned\n[2Jworld\n[31mred[0m\n"
    assert no_escapes(out)


def test_the_process_runtime_log_tail_is_cleaned(tmp_path: Path) -> None:
    from supervisor.runtime.process.runtime import ProcessRuntime

    log = tmp_path / "m.log"
    log.write_bytes(f"loading {TITLE}\nerror: {CLEAR}boom\x07\n".encode())
    exited_process_record(tmp_path, log)
    rt = ProcessRuntime(state_dir=tmp_path, lock_path=tmp_path / "lock.json")
    try:
        tail = rt.log_tail("p1", lines=5)
    finally:
        rt.close()
    assert tail == "loading ]0;pwned\nerror: [2Jboom\n" and no_escapes(tail)


def test_no_cli_module_prints_around_the_output_function() -> None:
    """So a new command cannot forget: only cli/output.py may call click.echo or touch sys.stdout/stderr."""
    offenders = []
    for path in sorted(CLI_DIR.glob("*.py")):
        if path.name == "output.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and (
                (node.attr in ("echo", "secho") and isinstance(node.value, ast.Name) and node.value.id == "click")
                or (node.attr in ("stdout", "stderr") and isinstance(node.value, ast.Name) and node.value.id == "sys")
            ):
                offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
