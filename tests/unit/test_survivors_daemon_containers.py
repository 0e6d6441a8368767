"""Issue 22: what the loop does with what it hears from containers (engine events, exits found by
inspect, probe results, the probes it sends), driven through the Supervisor's event queue on the fake
runtime, the fake clock and a recording metrics sink: mutants of supervisor/daemon/containers.py."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from supervisor.control.api import NullMetrics
from supervisor.core.events import ContainerAction, ContainerEvent, ProbeResult
from supervisor.core.lifecycle import STARTING_PROBE_MIN_S, ProbeOutcome, State
from supervisor.core.spec import ContainerSpec, HealthPolicy
from supervisor.errors import RuntimeOperationError

from .fakes import FakeProber, FakeRuntime
from .helpers import desired
from .test_loop import Harness


class RecordingMetrics(NullMetrics):
    """The MetricsSink calls the container side makes, as tuples; the rest are ignored."""

    def __init__(self) -> None:
        self.exits: list[tuple[str, int | None, bool]] = []
        self.probes: list[tuple[str, float, bool]] = []

    def exit(self, model: str, code: int | None, oom_killed: bool) -> None:
        self.exits.append((model, code, oom_killed))

    def probe(self, model: str, latency_s: float, ok: bool) -> None:
        self.probes.append((model, latency_s, ok))


class TailRuntime(FakeRuntime):
    """A runtime whose log tail has many lines (and blank ones) and records the lines asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.tail_lines: list[int] = []

    def log_tail(self, container_id: str, *, lines: int = 20) -> str:
        self._call("logs", container_id)
        self.tail_lines.append(lines)
        return "\n one\n two\n\n three\n four\n  \n"


class RefusingProber(FakeProber):
    def submit(self, model: str, container_id: str, *, host_ip: str, port: int, timeout_s: float) -> bool:
        self.sent.append((model, container_id))
        return False


def running(models: list[str] | None = None, *, runtime: FakeRuntime | None = None) -> tuple[Harness, RecordingMetrics]:
    h = Harness([desired(m, port=18081 + i) for i, m in enumerate(models or ["a"])], runtime=runtime)
    m = RecordingMetrics()
    h.sup.metrics = m
    h.step()
    h.healthy(*(models or ["a"]))
    h.clock.advance(60)
    return h, m


def transitions(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "transition"]


def test_oom_exit_tells_the_lifecycle_the_metrics_and_the_log() -> None:
    h, m = running()
    cid = h.cid("a")
    h.runtime.crash(cid, 137, oom=True)
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=137))
    assert m.exits == [("a", 137, True)]
    tr = transitions(logs)
    assert (tr[0]["from"], tr[0]["to"]) == ("RUNNING", "EXITED")
    assert str(tr[0]["reason"]).startswith("OOMKilled")
    ex = [e for e in logs if e["event"] == "container exited"]
    assert len(ex) == 1 and ex[0]["log_level"] == "warning"
    assert ex[0]["model"] == "a" and ex[0]["container"] == cid[:12]
    assert ex[0]["exit_code"] == 137 and ex[0]["oom_killed"] is True and ex[0]["detected_after_ms"] is None


def test_plain_exit_names_its_code_and_not_oom() -> None:
    h, m = running()
    cid = h.cid("a")
    h.runtime.crash(cid, 3)
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=99))   # the engine's code wins
    assert m.exits == [("a", 3, False)]
    assert str(transitions(logs)[0]["reason"]).startswith("exited with code 3")
    assert h.sup.slots["a"].lc.last_exit_code == 3 or h.state("a") is State.STARTING


def test_exit_reason_carries_the_last_three_non_blank_log_lines_of_five_asked() -> None:
    rt = TailRuntime()
    h, _ = running(runtime=rt)
    cid = h.cid("a")
    rt.crash(cid, 1)
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=1))
    assert rt.tail_lines == [5]
    assert str(transitions(logs)[0]["reason"]).endswith("last log: two |  three |  four")   # lines kept as written


def test_detection_delay_is_logged_in_ms_from_the_event_time() -> None:
    h, _ = running()
    cid = h.cid("a")
    h.runtime.crash(cid, 1)
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=1, time_ns=time.time_ns() - 1000 * 10**9))
    ms = [e for e in logs if e["event"] == "container exited"][0]["detected_after_ms"]
    assert isinstance(ms, int) and 1_000_000 <= ms < 1_060_000


def test_event_time_in_the_future_logs_zero_delay() -> None:
    h, _ = running()
    cid = h.cid("a")
    h.runtime.crash(cid, 1)
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=1, time_ns=time.time_ns() + 10**12))
    assert [e for e in logs if e["event"] == "container exited"][0]["detected_after_ms"] == 0


def test_die_of_a_stopping_container_reads_no_log_tail() -> None:
    from concurrent.futures import Future

    from supervisor.control.api import CommandResult, StopModels
    from supervisor.core.events import ControlRequest

    rt = TailRuntime()
    h, _ = running(runtime=rt)
    fut: Future[CommandResult] = Future()
    h.step(ControlRequest(StopModels(("a",)), fut))
    assert h.state("a") is State.STOPPED and rt.tail_lines == []


def test_destroyed_container_clears_the_slot_and_tells_the_lifecycle() -> None:
    h, m = running()
    cid = h.cid("a")
    h.runtime.containers.pop(cid)
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DESTROY, cid, "a", exit_code=9))
    assert m.exits[0] == ("a", 9, False)
    tr = transitions(logs)
    assert (tr[0]["from"], tr[0]["to"]) == ("RUNNING", "EXITED")
    assert str(tr[0]["reason"]).startswith("exited with code 9; last log: container was removed")
    assert h.sup.slots["a"].container_id != cid          # a new one was created in its place
    assert "create" in h.runtime.ops()


def test_die_of_an_unknown_container_costs_no_engine_call() -> None:
    h, m = running()
    h.runtime.calls.clear()
    h.step(ContainerEvent(ContainerAction.DIE, "someone-else", "a", exit_code=1))
    h.step(ContainerEvent(ContainerAction.DIE, "someone-else", "", exit_code=1))
    assert ("inspect", "someone-else") not in h.runtime.calls and m.exits == []
    assert h.state("a") is State.RUNNING


def test_die_event_naming_the_wrong_model_trusts_the_engine() -> None:
    h, m = running(["a", "b"])
    cid_b = h.cid("b")
    h.runtime.crash(cid_b, 1)
    h.step(ContainerEvent(ContainerAction.DIE, cid_b, "a", exit_code=1))   # wrong model named
    assert h.state("a") is State.RUNNING and m.exits == [("b", 1, False)]


def test_inspect_failure_logs_and_resyncs_at_once() -> None:
    h, m = running()
    cid = h.cid("a")
    h.runtime.crash(cid, 1)
    h.step()                                   # the periodic resync, before the event
    h.runtime.fail_next["inspect"] = RuntimeOperationError("engine busy")
    h.runtime.calls.clear()
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=1))
    failed = [e for e in logs if e["event"] == "inspect failed"]
    assert len(failed) == 1 and failed[0]["container"] == cid[:12] and "engine busy" in str(failed[0]["error"])
    assert failed[0]["log_level"] == "warning"
    assert "list" in h.runtime.ops()                    # the resync found the exit instead
    assert m.exits == [("a", 1, False)]


def test_oom_event_only_logs() -> None:
    h, m = running()
    cid = h.cid("a")
    h.step()                                   # the periodic resync, before the event
    h.runtime.calls.clear()
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.OOM, cid, "a"))
    oom = [e for e in logs if e["event"] == "container OOM"]
    assert len(oom) == 1 and oom[0]["model"] == "a" and oom[0]["container"] == cid[:12]
    assert oom[0]["log_level"] == "warning"
    assert h.runtime.calls == [] and h.state("a") is State.RUNNING


def test_unpause_after_pause_lets_a_later_resync_leave_it_alone() -> None:
    h, _ = running()
    cid = h.cid("a")
    h.runtime.pause(cid)
    h.step(ContainerEvent(ContainerAction.PAUSE, cid, "a"))
    assert h.state("a") is State.STARTING                  # hung: killed and started in place


def test_start_of_an_unknown_container_of_ours_resyncs_at_once() -> None:
    h, _ = running()
    h.step()
    h.runtime.calls.clear()
    h.step(ContainerEvent(ContainerAction.START, "stranger", "a"))
    assert "list" in h.runtime.ops()


def test_start_of_a_known_or_foreign_container_does_not_resync() -> None:
    h, _ = running()
    h.step()
    h.runtime.calls.clear()
    h.step(ContainerEvent(ContainerAction.START, h.cid("a"), "a"))
    h.step(ContainerEvent(ContainerAction.START, "stranger", ""))
    assert "list" not in h.runtime.ops()


def test_probe_results_feed_the_metrics_except_inconclusive() -> None:
    h, m = running()
    cid = h.cid("a")
    m.probes.clear()
    with capture_logs() as logs:
        h.step(ProbeResult("a", cid, ProbeOutcome.INCONCLUSIVE, 0.5, "EMFILE"))
    assert m.probes == []
    inc = [e for e in logs if e["event"] == "probe inconclusive; daemon-side"]
    assert len(inc) == 1 and inc[0]["model"] == "a" and inc[0]["detail"] == "EMFILE"
    assert inc[0]["log_level"] == "warning"
    h.step(ProbeResult("a", cid, ProbeOutcome.OK, 0.25))
    assert m.probes == [("a", 0.25, True)]


def test_failed_probe_is_logged_with_the_count_and_the_threshold() -> None:
    h, m = running()
    cid = h.cid("a")
    m.probes.clear()
    with capture_logs() as logs:
        h.step(ProbeResult("a", cid, ProbeOutcome.FAILED, 0.3, "HTTP 503"))
    assert m.probes == [("a", 0.3, False)]
    f = [e for e in logs if e["event"] == "probe failed"]
    assert len(f) == 1 and f[0]["model"] == "a" and f[0]["detail"] == "HTTP 503"
    assert f[0]["failures"] == 1 and f[0]["threshold"] == h.sup.slots["a"].lc.health.failures
    assert f[0]["log_level"] == "info"


def test_probe_of_a_stale_container_or_unknown_model_is_ignored() -> None:
    h, m = running()
    m.probes.clear()
    h.step(ProbeResult("a", "old-container", ProbeOutcome.FAILED, 0.1, "x"),
           ProbeResult("zz", "c", ProbeOutcome.FAILED, 0.1, "x"))
    assert m.probes == [] and h.sup.slots["a"].lc.probe_failures == 0


def test_probes_carry_the_models_timeout_and_are_retried_when_refused() -> None:
    h = Harness([desired("a", health=HealthPolicy(timeout_s=7.5))])
    seen: list[float] = []

    class Recording(FakeProber):
        def submit(self, model: str, container_id: str, *, host_ip: str, port: int, timeout_s: float) -> bool:
            seen.append(timeout_s)
            return super().submit(model, container_id, host_ip=host_ip, port=port, timeout_s=timeout_s)

    h.sup.prober = Recording()
    h.step()
    h.clock.advance(1)
    h.step()
    assert seen and set(seen) == {7.5}


def test_a_refused_probe_is_submitted_again_shortly_not_in_a_busy_loop() -> None:
    """A probe refused because one is in flight (maybe the previous container's, up to its health timeout)
    is tried again STARTING_PROBE_MIN_S later: the loop does not spin on it meanwhile."""
    h = Harness([desired("a")])
    h.sup.prober = p = RefusingProber()
    h.step()
    h.clock.advance(1)
    h.step()
    n = len(p.sent)
    assert n >= 1
    assert h.sup.slots["a"].lc.next_deadline() == pytest.approx(h.clock() + STARTING_PROBE_MIN_S)
    h.step()
    assert len(p.sent) == n, "not again at the same instant"
    h.clock.advance(STARTING_PROBE_MIN_S)
    h.step()
    assert len(p.sent) == n + 1, "again once STARTING_PROBE_MIN_S has passed"


def test_an_accepted_probe_is_not_sent_again_before_due() -> None:
    h = Harness([desired("a")])
    h.step()
    h.clock.advance(1)
    h.step()
    n = len(h.prober.sent)
    h.step()
    assert n >= 1 and len(h.prober.sent) == n


class LongIds(FakeRuntime):
    """Container ids as long as the engine's: logs name only their first 12 characters."""

    def create(self, spec: ContainerSpec, *, beside: str = "", held: bool = False) -> str:
        cid = super().create(spec, beside=beside, held=held)
        long = cid + "-" + "f" * 50
        self.containers[long] = replace(self.containers.pop(cid), id=long)
        return long


def test_logs_name_the_first_12_characters_of_a_container_id() -> None:
    rt = LongIds()
    h, _ = running(runtime=rt)
    h.step()
    cid = h.cid("a")
    assert len(cid) > 13
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.OOM, cid, "a"))
        rt.crash(cid, 137, oom=True)
        rt.fail_next["inspect"] = RuntimeOperationError("busy")
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=137))
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=137))
    named = {e["event"]: e["container"] for e in logs
             if e["event"] in ("container OOM", "inspect failed", "container exited")}
    assert named == {"container OOM": cid[:12], "inspect failed": cid[:12], "container exited": cid[:12]}


def test_the_exit_log_tail_is_read_from_the_dead_container() -> None:
    rt = TailRuntime()
    h, _ = running(runtime=rt)
    cid = h.cid("a")
    rt.crash(cid, 1)
    rt.calls.clear()
    h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=1))
    assert ("logs", cid) in rt.calls


def test_a_die_event_without_the_model_name_still_finds_the_model() -> None:
    h, m = running()
    cid = h.cid("a")
    h.runtime.crash(cid, 2)
    h.step(ContainerEvent(ContainerAction.DIE, cid, "", exit_code=2))
    assert m.exits == [("a", 2, False)]


def test_a_destroy_event_without_the_model_name_still_clears_the_model() -> None:
    h, m = running()
    h.step()
    cid = h.cid("a")
    h.runtime.containers.pop(cid)
    h.step(ContainerEvent(ContainerAction.DESTROY, cid, "", exit_code=4))
    assert m.exits[:1] == [("a", 4, False)]


def test_the_die_of_a_stopped_models_container_is_not_an_exit() -> None:
    from concurrent.futures import Future

    from supervisor.control.api import CommandResult, StopModels
    from supervisor.core.events import ControlRequest

    h, m = running()
    cid = h.cid("a")
    fut: Future[CommandResult] = Future()
    h.step(ControlRequest(StopModels(("a",)), fut))
    assert h.state("a") is State.STOPPED
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=0))
    assert m.exits == [] and not any(e["event"] == "container exited" for e in logs)


def test_a_pause_event_itself_restarts_the_hung_model() -> None:
    h, _ = running()
    h.step()                                   # the periodic resync, before the event
    cid = h.cid("a")
    h.runtime.pause(cid)
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.PAUSE, cid, "a"))
    tr = transitions(logs)
    assert (tr[0]["from"], tr[0]["to"], tr[0]["reason"]) == ("RUNNING", "EXITED", "container paused (hung): restart")


def test_failed_probes_name_their_detail_when_the_model_is_restarted() -> None:
    h, _ = running()
    cid = h.cid("a")
    with capture_logs() as logs:
        for _ in range(h.sup.slots["a"].lc.health.failures):
            h.step(ProbeResult("a", cid, ProbeOutcome.FAILED, 0.1, "HTTP 503"))
    tr = transitions(logs)
    assert tr and str(tr[0]["reason"]) == f"health check failed {h.sup.slots['a'].lc.health.failures}x (HTTP 503)"


def test_a_good_probe_of_a_running_model_logs_no_failure() -> None:
    h, _ = running()
    with capture_logs() as logs:
        h.step(ProbeResult("a", h.cid("a"), ProbeOutcome.OK, 0.1))
    assert not any(e["event"] == "probe failed" for e in logs)


def test_probes_go_to_the_models_own_container_host_and_port_and_skip_none() -> None:
    from concurrent.futures import Future

    from supervisor.control.api import CommandResult, StopModels
    from supervisor.core.events import ControlRequest

    seen: list[tuple[str, str, str, int]] = []

    class Recording(FakeProber):
        def submit(self, model: str, container_id: str, *, host_ip: str, port: int, timeout_s: float) -> bool:
            seen.append((model, container_id, host_ip, port))
            return True

    h = Harness([desired("a", port=18081), desired("b", port=18082)])
    h.sup.prober = Recording()
    h.step()
    fut: Future[CommandResult] = Future()
    h.step(ControlRequest(StopModels(("a",)), fut))      # the first model in order is not probed
    seen.clear()
    h.clock.advance(5)
    h.step()
    assert seen == [("b", h.cid("b"), "127.0.0.1", 18082)]
