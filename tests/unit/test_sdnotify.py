"""The notify protocol against a real datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from supervisor.control.api import NullNotifier
from supervisor.daemon.sdnotify import SdNotifier, watchdog_interval_s


def receive(sock: socket.socket) -> str:
    sock.settimeout(5)
    return sock.recv(4096).decode()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    yield sock, str(path)
    sock.close()


@pytest.fixture
def abstract_systemd() -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"llama-supervisor-test-{os.getpid()}-{time.monotonic_ns()}"
    sock.bind("\0" + name)
    yield sock, "@" + name
    sock.close()


def lifecycle(notifier: SdNotifier) -> None:
    notifier.ready()
    notifier.watchdog()
    notifier.status("3/4 models running")
    notifier.reloading()
    notifier.ready()
    notifier.stopping()


@pytest.mark.parametrize("where", ["systemd", "abstract_systemd"])
def test_messages_arrive_in_order(where: str, request: pytest.FixtureRequest) -> None:
    sock, address = request.getfixturevalue(where)
    notifier = SdNotifier(address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lifecycle(notifier)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = [receive(sock) for _ in range(6)]
    notifier.close()

    assert got[:3] == ["READY=1", "WATCHDOG=1", "STATUS=3/4 models running"]
    reloading, usec = got[3].split("\n")
    assert reloading == "RELOADING=1"
    assert usec.startswith("MONOTONIC_USEC=")
    assert before <= int(usec.removeprefix("MONOTONIC_USEC=")) <= after
    assert got[4:] == ["READY=1", "STOPPING=1"]


def test_status_text_stays_one_line(systemd: tuple[socket.socket, str]) -> None:
    sock, address = systemd
    SdNotifier(address).status("2/3 running\nqwen: BACKOFF")
    assert receive(sock) == "STATUS=2/3 running qwen: BACKOFF"


def test_a_vanished_systemd_never_raises(tmp_path: Path) -> None:
    notifier = SdNotifier(str(tmp_path / "nobody-listens"))
    with capture_logs() as logs:
        lifecycle(notifier)
        assert notifier.notify("WATCHDOG=1") is False
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1  # once per outage, not once per ping
    assert warnings[0]["event"] == "sd_notify failed"


def test_from_env() -> None:
    assert isinstance(SdNotifier.from_env({}), NullNotifier)
    assert isinstance(SdNotifier.from_env({"NOTIFY_SOCKET": "relative/path"}), NullNotifier)
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": "@abstract"})
    assert isinstance(notifier, SdNotifier) and notifier.notify_socket == "@abstract"


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
