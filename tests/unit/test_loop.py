"""The loop thread's logic, driven by hand: fake runtime, fake clock, events posted by the test."""

from __future__ import annotations

import queue
import random
import signal
from concurrent.futures import Future

import pytest
from structlog.testing import capture_logs

from supervisor.control.api import CommandResult, Reread, StartModels, StopModels
from supervisor.core.events import (
    ContainerAction,
    ContainerEvent,
    ControlRequest,
    Event,
    ManifestsChanged,
    ProbeResult,
    SignalReceived,
)
from supervisor.core.lifecycle import ProbeOutcome, State
from supervisor.core.spec import DesiredModel, RestartSettings
from supervisor.daemon.loop import LoopSettings, Supervisor
from supervisor.errors import ManifestError, RuntimeOperationError

from .fakes import FakeClock, FakeNotifier, FakeProber, FakeRuntime, FakeVerifier
from .helpers import desired, observed


class Harness:
    def __init__(self, models: list[DesiredModel], *, runtime: FakeRuntime | None = None,
                 settings: LoopSettings = LoopSettings()) -> None:
        self.models: dict[str, DesiredModel] | ManifestError = {m.name: m for m in models}
        self.runtime = runtime or FakeRuntime()
        self.clock = FakeClock()
        self.prober = FakeProber()
        self.verifier = FakeVerifier()
        self.notifier = FakeNotifier()
        self.q: queue.Queue[Event] = queue.Queue()
        self.sup = Supervisor(events=self.q, runtime=self.runtime, verifier=self.verifier,
                              load_desired=self._load, prober=self.prober, notifier=self.notifier,
                              clock=self.clock, rng=random.Random(1), settings=settings)
        self.sup._reload(apply=True, origin="start")

    def _load(self) -> dict[str, DesiredModel]:
        if isinstance(self.models, ManifestError):
            raise self.models
        return dict(self.models)

    def step(self, *events: Event) -> None:
        for e in events:
            self.q.put(e)
        self.sup.iteration(block=False)

    def cid(self, model: str) -> str:
        cid = self.sup.slots[model].container_id
        assert cid is not None
        return cid

    def state(self, model: str) -> State:
        return self.sup.slots[model].lc.state

    def healthy(self, *models: str) -> None:
        self.step(*[ProbeResult(m, self.cid(m), ProbeOutcome.OK, 0.01) for m in models])


def two() -> list[DesiredModel]:
    return [desired("a", port=18081), desired("b", port=18082)]


def test_start_creates_both_then_unchanged_models_cost_zero_docker_calls() -> None:
    h = Harness(two())
    h.step()
    assert h.runtime.ops().count("create") == 2 and h.verifier.checked == ["a", "b"]
    assert {h.state("a"), h.state("b")} == {State.STARTING}
    h.clock.advance(1)
    h.step()
    assert {m for m, _ in h.prober.sent} == {"a", "b"}
    h.healthy("a", "b")
    assert {h.state("a"), h.state("b")} == {State.RUNNING}
    assert "READY" in h.notifier.messages and "STATUS=2/2 models running" in h.notifier.messages
    before = len(h.runtime.calls)
    for _ in range(10):
        h.clock.advance(2)
        h.step()
        h.healthy("a", "b")
    assert len(h.runtime.calls) == before      # probes and plans, no Docker call


def test_adopts_matching_container_without_restart() -> None:
    a = desired("a")
    rt = FakeRuntime()
    rt.add(observed(a, cid="keep-me"))
    h = Harness([a], runtime=rt)
    h.step()
    assert h.cid("a") == "keep-me" and h.state("a") is State.STARTING
    assert rt.ops() == ["list"]
    h.healthy("a")
    assert h.state("a") is State.RUNNING and h.sup.slots["a"].lc.restarts == 0


def test_hash_mismatch_at_start_is_recreated() -> None:
    old, new = desired("a", ctx=512), desired("a", ctx=1024)
    rt = FakeRuntime()
    rt.add(observed(old, cid="old"))
    h = Harness([new], runtime=rt)
    h.step()
    assert rt.ops() == ["list", "stop", "remove", "create", "start", "inspect"]
    assert h.cid("a") != "old" and "old" not in rt.containers


def test_orphans_and_duplicates_removed() -> None:
    a = desired("a")
    rt = FakeRuntime()
    rt.add(observed(a, cid="good"))
    rt.add(observed(a, cid="dup", status="exited"))
    rt.add(observed("gone", cid="orphan"))
    h = Harness([a], runtime=rt)
    h.step()
    assert set(rt.containers) == {"good"}
    assert ("remove", "orphan") in rt.calls and ("remove", "dup") in rt.calls


def test_crash_after_stable_run_restarts_in_place_at_once() -> None:
    h = Harness(two())
    h.step()
    h.healthy("a", "b")
    h.clock.advance(60)
    cid_a, cid_b = h.cid("a"), h.cid("b")
    h.runtime.calls.clear()
    h.runtime.crash(cid_a, 137)
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DIE, cid_a, "a", exit_code=137))
    assert h.cid("a") == cid_a and h.state("a") is State.STARTING
    assert [c for c in h.runtime.calls if c[1] == cid_b] == []          # the other model is untouched
    assert ("start", cid_a) in h.runtime.calls
    tr = [e for e in logs if e["event"] == "transition"]
    assert [(e["from"], e["to"]) for e in tr] == [("RUNNING", "EXITED"), ("EXITED", "STARTING")]
    assert "exited with code 137" in tr[0]["reason"] and "out of memory" in tr[0]["reason"]


def test_stale_die_event_after_restart_in_place_is_ignored() -> None:
    h = Harness([desired("a")])
    h.step()
    h.healthy("a")
    h.clock.advance(60)
    cid = h.cid("a")
    h.runtime.pause(cid)
    h.step(ContainerEvent(ContainerAction.PAUSE, cid, "a"))
    # Killed while still paused (no unpause: the hung server must not answer again), then started in place.
    mine = [c for c in h.runtime.calls if c[1] == cid]
    assert ("unpause", cid) not in mine
    assert mine.index(("kill", cid)) < len(mine) - 1 - mine[::-1].index(("start", cid))
    assert h.runtime.containers[cid].status == "running" and h.state("a") is State.STARTING
    h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=137))   # the die of our own kill
    assert h.state("a") is State.STARTING


def test_quick_crashes_back_off_then_fatal_and_stop_trying() -> None:
    h = Harness([desired("a", restart=RestartSettings(max_failures=3))])
    h.step()
    delays = []
    for _ in range(3):
        cid = h.cid("a")
        h.runtime.crash(cid, 1)
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=1))
        if h.state("a") is State.BACKOFF:
            delays.append(h.sup.slots["a"].lc.backoff_s)
            n = len(h.runtime.calls)
            h.clock.advance(0.5)
            h.step()
            assert len(h.runtime.calls) == n           # still waiting
            h.clock.advance(delays[-1])
            h.step()
    assert h.state("a") is State.FATAL
    assert len(delays) == 2 and 0.9 <= delays[0] <= 1.1 and 1.8 <= delays[1] <= 2.2
    n = len(h.runtime.calls)
    h.clock.advance(3600)
    h.step()
    assert h.runtime.ops()[n:] == ["list"]


def test_verification_failure_refuses_start_and_goes_fatal() -> None:
    h = Harness([desired("a")])
    h.verifier.bad_models.add("a")
    with capture_logs() as logs:
        h.step()
    assert "create" not in h.runtime.ops() and h.state("a") is State.FATAL
    assert "SHA-256" in h.sup.slots["a"].lc.reason
    assert any(e["event"] == "verification failed; start refused" for e in logs)
    for _ in range(5):
        h.clock.advance(120)
        h.step()
    assert h.verifier.checked == ["a"]


def test_invalid_manifests_change_nothing_and_log_file_line() -> None:
    h = Harness(two())
    h.step()
    h.healthy("a", "b")
    h.runtime.calls.clear()
    h.models = ManifestError(["manifests/a.yaml:7: server.port: expected an integer"])
    from supervisor.core.events import ManifestsChanged
    with capture_logs() as logs:
        h.step(ManifestsChanged())
    assert h.runtime.calls == [] and set(h.sup.slots) == {"a", "b"}
    assert [e["problem"] for e in logs if e.get("problem")] == ["manifests/a.yaml:7: server.port: expected an integer"]


def test_manifest_change_recreates_only_that_model() -> None:
    h = Harness(two())
    h.step()
    h.healthy("a", "b")
    cid_b = h.cid("b")
    h.runtime.calls.clear()
    assert isinstance(h.models, dict)
    h.models["a"] = desired("a", port=18081, ctx=1024)
    from supervisor.core.events import ManifestsChanged
    h.step(ManifestsChanged())
    assert h.runtime.ops() == ["stop", "remove", "create", "start", "inspect"]
    assert h.cid("b") == cid_b and h.state("b") is State.RUNNING


def test_start_command_waits_for_running() -> None:
    h = Harness([desired("a", restart=RestartSettings(max_failures=1))])
    h.verifier.bad_models.add("a")
    h.step()
    assert h.state("a") is State.FATAL
    h.verifier.bad_models.clear()
    fut: Future[CommandResult] = Future()
    h.step(ControlRequest(StartModels(("a", "nope")), fut))
    assert h.state("a") is State.STARTING and not fut.done()
    h.healthy("a")
    r = fut.result(0)
    assert [x.message for x in r.results] == ["started"] and r.unknown == ("nope",)


def test_stop_command_stops_gracefully_and_stays_stopped() -> None:
    h = Harness([desired("a")])
    h.step()
    h.healthy("a")
    fut: Future[CommandResult] = Future()
    h.step(ControlRequest(StopModels(("a",)), fut))
    assert ("stop", h.cid("a")) in h.runtime.calls and h.state("a") is State.STOPPED
    assert fut.result(0).ok
    n = len(h.runtime.calls)
    h.clock.advance(100)
    h.step()
    assert h.runtime.ops()[n:] == ["list"]    # the periodic resync, nothing else


def test_each_resync_runs_the_runtime_upkeep() -> None:
    h = Harness([desired("a")])
    h.step()
    h.healthy("a")
    before = h.runtime.maintained
    h.clock.advance(100)
    h.step()
    assert h.runtime.maintained == before + 1


def test_reread_reports_diff_without_applying() -> None:
    h = Harness(two())
    h.step()
    h.models = {"b": desired("b", port=18082, ctx=2048), "c": desired("c", port=18083)}
    fut: Future[CommandResult] = Future()
    h.step(ControlRequest(Reread(), fut))
    assert {(r.name, r.message) for r in fut.result(0).results} == {
        ("a", "disappeared"), ("b", "changed"), ("c", "available")}
    assert set(h.sup.slots) == {"a", "b"}


@pytest.mark.parametrize("stop_models", [False, True])
def test_sigterm_leaves_containers_running_unless_asked(stop_models: bool) -> None:
    h = Harness([desired("a")], settings=LoopSettings(stop_models_on_exit=stop_models))
    h.step()
    h.healthy("a")
    h.q.put(SignalReceived(signal.SIGTERM))
    h.sup.run_after_start_for_test = True  # type: ignore[attr-defined]
    h.sup.iteration(block=False)
    assert h.sup.stopping
    h.sup._shutdown_steps()
    assert (("stop", h.cid("a")) in h.runtime.calls) is stop_models
    assert "STOPPING" in h.notifier.messages


def test_missed_exit_is_repaired_by_resync() -> None:
    h = Harness([desired("a")], settings=LoopSettings(resync_interval_s=30))
    h.step()
    h.healthy("a")
    h.clock.advance(60)
    h.runtime.crash(h.cid("a"), 139)            # no event: the stream was down
    h.step()
    assert h.state("a") is State.STARTING and ("start", h.cid("a")) in h.runtime.calls


def test_recreate_that_fails_after_removing_the_old_container_plans_from_a_fresh_list() -> None:
    h = Harness([desired("a", port=18081)])
    h.step()
    h.healthy("a")
    old = h.cid("a")
    h.runtime.fail_next["start"] = RuntimeOperationError("docker start: injected")
    h.models = {"a": desired("a", port=18081, ctx=1024)}
    with capture_logs() as logs:
        h.step(ManifestsChanged())
    assert old not in h.runtime.containers
    # no action on the removed container: the failure made the loop list again before re-planning
    assert ("stop", old) not in h.runtime.calls[h.runtime.calls.index(("remove", old)) + 1:]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["start failed"]


def test_running_transition_says_where_the_model_answers() -> None:
    h = Harness([desired("a")])
    h.step()
    with capture_logs() as logs:
        h.healthy("a")
    (running,) = [e for e in logs if e["event"] == "transition" and e["to"] == "RUNNING"]
    port = h.sup.slots["a"].desired.spec.host_port
    assert running["url"] == f"http://127.0.0.1:{port}"


def test_a_start_in_place_is_verified_and_a_changed_model_file_refuses_it() -> None:
    """README: "verifies before every launch". docker start mounts the model's path again, so a file
    replaced since the create would be mounted unchecked; the start in place after a crash checks it."""
    h = Harness([desired("a")])
    h.step()
    h.healthy("a")
    h.clock.advance(60)
    cid = h.cid("a")
    assert h.verifier.checked == ["a"]                 # the create
    h.verifier.bad_models.add("a")
    h.runtime.calls.clear()
    h.runtime.crash(cid, 137)
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=137))
    assert h.verifier.checked == ["a", "a"]            # and the start in place
    assert ("start", cid) not in h.runtime.calls and h.state("a") is State.FATAL
    assert "SHA-256" in h.sup.slots["a"].lc.reason
    assert any(e["event"] == "verification failed; start refused" for e in logs)


def test_a_model_file_swapped_under_a_start_in_place_removes_the_container() -> None:
    h = Harness([desired("a")])
    h.step()
    h.healthy("a")
    h.clock.advance(60)
    cid = h.cid("a")
    h.verifier.swapped_models.add("a")
    h.runtime.calls.clear()
    h.runtime.crash(cid, 137)
    h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=137))
    assert ("start", cid) in h.runtime.calls and ("remove", cid) in h.runtime.calls
    assert h.state("a") is State.FATAL


def test_stop_command_while_loading_kills_at_once() -> None:
    """A model stopped before its first /health 200 is SIGKILLed: llama-server ignores SIGTERM while it loads."""
    h = Harness([desired("a")])
    h.step()
    assert h.state("a") is State.STARTING
    fut: Future[CommandResult] = Future()
    h.step(ControlRequest(StopModels(("a",)), fut))
    assert ("kill", h.cid("a")) in h.runtime.calls and ("stop", h.cid("a")) not in h.runtime.calls
    assert h.state("a") is State.STOPPED and fut.result(0).ok


def test_a_start_waiting_for_a_model_that_is_then_stopped_is_answered() -> None:
    h = Harness([desired("a")])
    h.step()
    h.healthy("a")
    h.step(ControlRequest(StopModels(("a",)), Future()))
    started: Future[CommandResult] = Future()
    h.step(ControlRequest(StartModels(("a",)), started))
    assert h.state("a") is State.STARTING and not started.done()
    h.step(ControlRequest(StopModels(("a",)), Future()))
    r = started.result(0)
    assert not r.ok and r.results[0].message.startswith("stopped before it was running")


def test_a_graceful_stop_lets_the_gateway_close_its_idle_connections_first() -> None:
    """Demand.stopping, before runtime.stop: llama-server's exit waits ~0.1 s for each idle keep-alive one."""
    h = Harness([desired("a")])
    released: list[tuple[int, list[str]]] = []
    h.sup.demand.on_stopping(lambda port: released.append((port, h.runtime.ops())))
    h.step()
    h.healthy("a")
    port = h.sup.cache[h.cid("a")].host_port
    assert port
    h.step(ControlRequest(StopModels(("a",)), Future()))
    assert [p for p, _ in released] == [port] and h.prober.released == [port]   # the gateway's and the prober's
    assert "stop" not in released[0][1] and h.runtime.ops().count("stop") == 1   # before the stop call


def test_a_kill_does_not_wait_for_the_gateway_but_lets_it_drop_that_port_s_client() -> None:
    h = Harness([desired("a")])
    released: list[tuple[int, list[str]]] = []
    h.sup.demand.on_stopping(lambda port: released.append((port, h.runtime.ops())))
    h.step()                                               # still loading: a stop is a kill
    port = h.sup.cache[h.cid("a")].host_port
    h.step(ControlRequest(StopModels(("a",)), Future()))
    assert ("kill", h.cid("a")) in h.runtime.calls
    assert [p for p, _ in released] == [port] and "kill" in released[0][1]   # after the kill, not before


def test_a_crashed_model_s_route_leaves_running_before_its_restart_runs() -> None:
    """The start in place blocks the loop (a Docker start); the gateway must not see the dead model RUNNING
    meanwhile, or it sends a failed request to it again, then to its port while it loads."""
    seen: list[State] = []

    class Watching(FakeRuntime):
        def start(self, container_id: str) -> None:
            seen.append(h.sup.routes()["a"].state)       # what the gateway reads while the start runs
            super().start(container_id)

    h = Harness(two(), runtime=Watching())
    h.step()
    h.healthy("a", "b")
    h.clock.advance(60)
    assert h.sup.routes()["a"].state is State.RUNNING
    seen.clear()
    h.runtime.crash(h.cid("a"), 137)
    h.step(ContainerEvent(ContainerAction.DIE, h.cid("a"), "a", exit_code=137))
    assert ("start", h.cid("a")) in h.runtime.calls
    assert seen and State.RUNNING not in seen, f"the route said {seen} during the restart's start call"
