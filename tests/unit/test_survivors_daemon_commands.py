"""Issue 22: each control command's answer (ok, per-model messages, unknown names, errors) and what it
does to the models, driven through the Supervisor's event queue on the fakes: mutants of
supervisor/daemon/commands.py."""

from __future__ import annotations

from concurrent.futures import Future

from structlog.testing import capture_logs

from supervisor.control.api import CommandResult
from supervisor.core.commands import (
    Command,
    ModelResult,
    Reload,
    Reread,
    RestartModels,
    Shutdown,
    StartModels,
    StopModels,
    Update,
)
from supervisor.core.events import ControlRequest
from supervisor.core.lifecycle import State
from supervisor.core.spec import RestartSettings
from supervisor.daemon.loop import LoopSettings
from supervisor.errors import ManifestError

from .helpers import desired
from .test_loop import Harness, two


def send(h: Harness, cmd: Command) -> Future[CommandResult]:
    fut: Future[CommandResult] = Future()
    h.step(ControlRequest(cmd, fut))
    return fut


def up(settings: LoopSettings = LoopSettings()) -> Harness:
    h = Harness(two(), settings=settings)
    h.step()
    h.healthy("a", "b")
    return h


def stopped_both() -> Harness:
    h = up()
    assert send(h, StopModels(("all",))).result(0).ok
    assert h.state("a") is State.STOPPED and h.state("b") is State.STOPPED
    return h


def test_start_without_wait_answers_at_once_per_model() -> None:
    h = stopped_both()
    r = send(h, StartModels(("b", "a"), wait=False)).result(0)
    assert r == CommandResult(ok=True, results=(ModelResult("b", True, "starting"), ModelResult("a", True, "starting")))
    assert h.state("a") is State.STARTING and h.state("b") is State.STARTING


def test_start_without_wait_with_an_unknown_name_is_not_ok() -> None:
    h = stopped_both()
    r = send(h, StartModels(("a", "nope"), wait=False)).result(0)
    assert not r.ok and r.unknown == ("nope",) and r.results == (ModelResult("a", True, "starting"),)
    assert h.state("b") is State.STOPPED


def test_start_all_means_every_model_in_name_order() -> None:
    h = stopped_both()
    r = send(h, StartModels(("all",), wait=False)).result(0)
    assert [x.name for x in r.results] == ["a", "b"] and r.ok and r.unknown == ()


def test_start_wait_of_only_unknown_names_answers_at_once() -> None:
    h = up()
    fut = send(h, StartModels(("nope", "zz")))
    r = fut.result(0)
    assert not r.ok and r.unknown == ("nope", "zz") and r.results == ()


def test_start_wait_answers_when_running() -> None:
    h = stopped_both()
    fut = send(h, StartModels(("a",)))
    assert not fut.done()
    h.healthy("a")
    assert fut.result(0) == CommandResult(ok=True, results=(ModelResult("a", True, "started"),))


def test_start_wait_reports_a_failure_with_its_state_and_reason() -> None:
    h = Harness([desired("a", restart=RestartSettings(max_failures=1))])
    h.verifier.bad_models.add("a")
    h.step()
    assert h.state("a") is State.FATAL
    fut = send(h, StartModels(("a",)))
    r = fut.result(0)
    assert r.ok is False and len(r.results) == 1
    assert r.results[0].name == "a" and r.results[0].ok is False
    assert r.results[0].message.startswith("FATAL: ") and "SHA-256" in r.results[0].message


def test_start_wait_times_out_after_the_command_timeout() -> None:
    h = Harness(two(), settings=LoopSettings(command_timeout_s=10))
    h.step()
    h.healthy("a", "b")
    send(h, StopModels(("a", "b")))
    fut = send(h, StartModels(("a", "b")))
    h.clock.advance(9)
    h.step()
    assert not fut.done()
    h.clock.advance(1)                         # exactly at the deadline: no longer waiting
    h.step()
    r = fut.result(0)
    assert not r.ok and r.results[-1] == ModelResult("a,b", False, "timed out waiting")


def test_restart_of_a_running_model_stops_then_starts_it_and_keeps_it_wanted() -> None:
    h = up()
    with capture_logs() as logs:
        fut = send(h, RestartModels(("a",)))
    tr = [e for e in logs if e["event"] == "transition" and e["model"] == "a"]
    assert tr[0]["to"] == "STOPPING" and tr[0]["reason"] == "restart requested"
    assert h.state("a") is State.STARTING and h.state("b") is State.RUNNING
    h.healthy("a")
    assert fut.result(0) == CommandResult(ok=True, results=(ModelResult("a", True, "started"),))


def test_restart_of_a_stopped_model_starts_it() -> None:
    h = stopped_both()
    with capture_logs() as logs:
        send(h, RestartModels(("b",), wait=False))
    assert h.state("b") is State.STARTING and h.state("a") is State.STOPPED
    assert not any(e.get("reason") == "restart requested" for e in logs)


def test_stop_answers_stopped_per_model_and_names_the_unknown() -> None:
    h = up()
    r = send(h, StopModels(("b", "nope"))).result(0)
    assert r == CommandResult(ok=False, results=(ModelResult("b", True, "stopped"),), unknown=("nope",))
    assert h.state("a") is State.RUNNING



def test_waiter_for_a_model_that_disappears_fails_it() -> None:
    h = stopped_both()
    fut = send(h, StartModels(("a",)))
    h.models = {"b": desired("b", port=18082)}
    send(h, Update())
    h.step()
    r = fut.result(0)
    assert not r.ok and ModelResult("a", False, "disappeared from the manifests") in r.results


def test_update_applies_and_answers_the_diff() -> None:
    h = up()
    h.models = {"b": desired("b", port=18082, ctx=2048), "c": desired("c", port=18083)}
    r = send(h, Update()).result(0)
    assert r == CommandResult(ok=True, results=(
        ModelResult("c", True, "available"), ModelResult("b", True, "changed"), ModelResult("a", True, "disappeared")))
    assert set(h.sup.slots) == {"b", "c"}


def test_reread_answers_the_diff_in_order_and_applies_nothing() -> None:
    h = up()
    h.models = {"b": desired("b", port=18082, ctx=2048), "c": desired("c", port=18083)}
    r = send(h, Reread()).result(0)
    assert r.ok and [(x.name, x.message) for x in r.results] == [
        ("c", "available"), ("b", "changed"), ("a", "disappeared")]
    assert set(h.sup.slots) == {"a", "b"}


def test_update_of_invalid_manifests_is_refused_with_every_problem() -> None:
    h = up()
    h.models = ManifestError(["/etc/llama/a.toml:3: ctx_size must be positive",
                              "/etc/llama/b.toml:9: port taken"])
    r = send(h, Update()).result(0)
    assert r.ok is False and r.results == ()
    assert r.error is not None and r.error.splitlines() == [
        "/etc/llama/a.toml:3: ctx_size must be positive", "/etc/llama/b.toml:9: port taken"]
    assert set(h.sup.slots) == {"a", "b"}


def test_reread_of_invalid_manifests_is_refused() -> None:
    h = up()
    h.models = ManifestError(["/etc/llama/b.toml:1: bad"])
    r = send(h, Reread()).result(0)
    assert not r.ok and r.error is not None and "b.toml:1" in r.error


def test_reload_answers_after_the_reconcile_with_the_diff() -> None:
    h = up()
    h.models = {"a": desired("a", port=18081), "b": desired("b", port=18082), "c": desired("c", port=18083)}
    fut = send(h, Reload())
    h.step()
    r = fut.result(0)
    assert r == CommandResult(ok=True, results=(ModelResult("c", True, "available"),))
    assert "c" in h.sup.slots


def test_shutdown_answers_ok_and_stops_the_loop() -> None:
    h = up()
    r = send(h, Shutdown()).result(0)
    assert r == CommandResult(ok=True) and h.sup.stopping


def test_a_cancelled_request_is_not_executed() -> None:
    h = up()
    fut: Future[CommandResult] = Future()
    fut.cancel()
    h.step(ControlRequest(StopModels(("a",)), fut))
    assert h.state("a") is State.RUNNING and fut.cancelled()


def test_start_of_a_running_model_does_not_restart_it() -> None:
    h = up()
    cid = h.cid("a")
    r = send(h, StartModels(("a",), wait=False)).result(0)
    assert r.ok and ("stop", cid) not in h.runtime.calls and h.state("a") is State.RUNNING


def test_one_waiter_still_pending_does_not_hold_up_the_next() -> None:
    h = stopped_both()
    first = send(h, StartModels(("a",)))
    second = send(h, StartModels(("b",)))
    h.healthy("b")
    assert not first.done()
    assert second.result(0) == CommandResult(ok=True, results=(ModelResult("b", True, "started"),))


def test_a_waiter_reports_the_models_after_one_that_disappeared() -> None:
    h = stopped_both()
    fut = send(h, StartModels(("a", "b")))
    h.models = {"b": desired("b", port=18082)}
    send(h, Update())
    h.healthy("b")
    r = fut.result(0)
    assert r.results == (ModelResult("a", False, "disappeared from the manifests"), ModelResult("b", True, "started"))


def test_update_and_reload_name_their_origin_when_they_apply_a_change() -> None:
    h = up()
    h.models = {m.name: m for m in (*two(), desired("c", port=18083))}
    with capture_logs() as logs:
        send(h, Update())
    h.models = {m.name: m for m in (*two(), desired("c", port=18083), desired("d", port=18084))}
    with capture_logs() as later:
        send(h, Reload())
        h.step()
    applied = [e["origin"] for e in logs + later if e["event"] == "manifests applied"]
    assert applied == ["update", "reload"]


def test_reload_of_invalid_manifests_answers_every_problem() -> None:
    h = up()
    h.models = ManifestError(["/etc/llama/a.toml:2: bad", "/etc/llama/b.toml:4: worse"])
    fut = send(h, Reload())
    h.step()
    r = fut.result(0)
    assert r.ok is False and r.error == "/etc/llama/a.toml:2: bad\n/etc/llama/b.toml:4: worse"
