"""Unload (llama-supervisorctl unload, the console's Unload button) and operator starts of on-demand models,
through the loop on a fake clock: an unload stops an on-demand model as its idle TTL would (only with nothing
in flight, gracefully, and it stays loadable); a start from the operator gives it a full idle TTL."""

from __future__ import annotations

from concurrent.futures import Future

from structlog.testing import capture_logs

from supervisor.core.commands import CommandResult, ModelResult, StartModels, Unload, command_for
from supervisor.core.events import ControlRequest
from supervisor.core.lifecycle import State
from supervisor.core.spec import LoadPolicy

from .test_ondemand_loop import Rig, od


def command(r: Rig, cmd: Unload | StartModels) -> Future[CommandResult]:
    fut: Future[CommandResult] = Future()
    r.step(ControlRequest(cmd, fut))
    r.step()
    return fut


def test_unload_stops_an_idle_on_demand_model_gracefully_and_the_next_request_starts_it() -> None:
    r = Rig([od("a")])
    r.ask("a")
    r.healthy("a")
    with capture_logs() as logs:
        done = command(r, Unload(("a",)))
    assert done.result(0) == CommandResult(ok=True, results=(ModelResult("a", True, "stopped"),))
    assert r.state("a") is State.STOPPED
    assert any(e["event"] == "transition" and e["to"] == "STOPPING" and e["reason"] == "unloaded by the operator"
               for e in logs)
    ops = [op for op, arg in r.runtime.calls if arg != "a" or op != "list"]
    assert "stop" in ops and "kill" not in ops, f"a graceful stop (the KV cache is saved before it): {ops}"
    fut = r.ask("a")
    assert r.state("a") is State.STARTING, "still loadable: the next request starts it"
    r.healthy("a")
    assert fut.result(0).ok


def test_unload_is_refused_while_a_request_is_in_flight_and_for_always_models() -> None:
    r = Rig([od("a"), od("fixed", lifecycle=LoadPolicy.ALWAYS)])
    r.ask("a")
    r.healthy("a")
    assert r.demand.enter("a")
    busy = command(r, Unload(("a", "fixed", "nope"))).result(0)
    assert not busy.ok and busy.unknown == ("nope",)
    assert [(m.name, m.ok) for m in busy.results] == [("a", False), ("fixed", False)]
    assert "in flight" in busy.results[0].message and "not an on-demand model" in busy.results[1].message
    assert r.state("a") is State.RUNNING and r.state("fixed") is State.STARTING
    assert r.demand.enter("a"), "a refused unload leaves the model open to requests"
    r.demand.leave("a")
    r.demand.leave("a")
    everything = command(r, Unload(("all",))).result(0)
    assert everything == CommandResult(ok=True, results=(ModelResult("a", True, "stopped"),)), \
        "'all' is every on-demand model; always models are left alone"
    assert r.state("a") is State.STOPPED and r.state("fixed") is State.STARTING
    again = command(r, Unload(("a",))).result(0)
    assert again == CommandResult(ok=True, results=(ModelResult("a", True, "not loaded (STOPPED)"),))


def test_an_on_demand_model_started_by_the_operator_gets_its_full_idle_ttl() -> None:
    r = Rig([od("a", ttl=30.0)])
    r.clock.advance(1000)                    # long after the daemon started (and the model last stopped)
    command(r, command_for("start", ("a",), wait=False))
    assert r.state("a") is State.STARTING
    r.healthy("a")
    r.clock.advance(29)
    r.step()
    assert r.state("a") is State.RUNNING, "not stopped as idle at once: the start counts as a use"
    r.clock.advance(1)
    r.step()
    assert r.state("a") is State.STOPPED, "then its idle TTL stops it as usual"
