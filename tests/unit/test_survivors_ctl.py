"""`llama-supervisorctl status` exit codes when two apply (issue 22's survivor at cli/cmd_control.py):
an unknown name (4) outranks a model that is not running (3), as in supervisorctl."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from supervisor.control.server import ControlServer

from .fakes import FakeController
from .test_ctl_status import BROKEN, GEMMA, QWEN, run


@pytest.fixture
def daemon(sock_dir: Path) -> Iterator[FakeController]:
    controller = FakeController([GEMMA, QWEN, BROKEN])
    with capture_logs(), ControlServer(controller, sock_dir / "control.sock"):
        yield controller


def test_status_of_a_stopped_and_an_unknown_model_exits_4_not_3(daemon: FakeController, sock_dir: Path) -> None:
    code, out, err = run(sock_dir, "status", "broken", "nope")
    assert out.splitlines() == [
        "broken                           FATAL     failed to start 5 times; last log: error: unknown argument: --foo",
        "nope: ERROR (no such model)",
    ]
    assert code == 4


def test_status_json_of_a_stopped_and_an_unknown_model_exits_4(daemon: FakeController, sock_dir: Path) -> None:
    code, out, err = run(sock_dir, "status", "--json", "qwen", "nope")
    assert "nope: ERROR (no such model)" in err
    assert code == 4
