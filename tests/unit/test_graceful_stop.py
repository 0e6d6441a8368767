"""supervisor.cli.graceful: SIGTERM/SIGINT drain the gateway before the loop hears of them; a second one cuts the wait."""

from __future__ import annotations

import signal

from supervisor.cli.graceful import GracefulStop


class FakeGateway:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def close(self) -> None:
        self.calls.append("close")

    def cut(self) -> None:
        self.calls.append("cut")


def make() -> tuple[GracefulStop, list[str]]:
    calls: list[str] = []
    stop = GracefulStop(lambda signum: calls.append(f"loop:{signal.Signals(signum).name}"))
    stop.gateway = FakeGateway(calls)
    return stop, calls


def test_sigterm_drains_the_gateway_then_tells_the_loop() -> None:
    stop, calls = make()
    stop.on_signal(signal.SIGTERM)
    assert calls == []                   # the handler only records
    stop.step()
    assert calls == ["close", "loop:SIGTERM"]
    stop.step()
    assert calls == ["close", "loop:SIGTERM"]       # once


def test_a_second_signal_cuts_the_wait_and_tells_the_loop() -> None:
    stop, calls = make()
    stop.on_signal(signal.SIGINT)
    stop.on_signal(signal.SIGTERM)
    assert calls == ["cut", "loop:SIGTERM"]
    stop.step()
    assert calls == ["cut", "loop:SIGTERM", "close", "loop:SIGINT"]


def test_sighup_and_signals_before_the_gateway_go_to_the_loop_at_once() -> None:
    stop, calls = make()
    stop.on_signal(signal.SIGHUP)
    assert calls == ["loop:SIGHUP"]
    early = GracefulStop(lambda signum: calls.append(f"early:{signum}"))
    early.on_signal(signal.SIGTERM)
    early.step()
    assert calls == ["loop:SIGHUP", f"early:{int(signal.SIGTERM)}"]
