"""Start-first recreates (issue 21): the new container starts beside the old one that serves, the route
moves to it once healthy, the old one drains only its own requests and goes; where that cannot be (a
fixed port, a runtime of one container per model, no room in the budget, --recreate stop-first, a
successor that fails) the change goes stop-first.

The planner as values; the loop driven by hand (fake runtime, fake clock); the gateway's side is the
shared Demand (with the port of the route each request was given) and the published routes."""

from __future__ import annotations

from structlog.testing import capture_logs

from supervisor.cli.cmd_control import describe
from supervisor.control.api import NullMetrics
from supervisor.core.actions import CreateSuccessor, Drain, Remove
from supervisor.core.demand import Demand
from supervisor.core.events import ContainerAction, ContainerEvent, ManifestsChanged, ProbeResult, Tick
from supervisor.core.lifecycle import ProbeOutcome, State
from supervisor.core.planner import Handover, Serving, Want, plan
from supervisor.core.scheduler import Budget
from supervisor.core.spec import DesiredModel, HealthPolicy
from supervisor.core.status import ModelStatus
from supervisor.daemon.loop import LoopSettings
from supervisor.daemon.state import RecreateMode
from supervisor.runtime import PAIR_SUFFIX, container_name, successor_name

from .fakes import FakeRuntime
from .helpers import desired, observed
from .test_loop import Harness

# --- the planner --------------------------------------------------------------------------------


def _routed(new: DesiredModel, **kw: object) -> Want:
    return Want(new, run=True, serving=Serving.ROUTED, **kw)  # type: ignore[arg-type]


def test_a_serving_container_whose_config_changed_gets_a_successor_beside_it_when_start_first() -> None:
    old, new = desired("a", port=0, ctx=512), desired("a", port=0, ctx=1024)
    assert plan({"a": _routed(new, start_first=True)}, [observed(old, cid="c1")]) == [CreateSuccessor(new, "c1")]
    assert plan({"a": _routed(new)}, [observed(old, cid="c1")]) == [Drain("a", "c1")], "not eligible: stop-first"


def test_mid_handover_neither_container_is_removed_as_a_duplicate_but_a_third_one_is() -> None:
    old, new = desired("a", port=0, ctx=512), desired("a", port=0, ctx=1024)
    obs = [observed(old, cid="c1"), observed(new, cid="c2")]
    h = Handover("c1", "c2")
    assert plan({"a": _routed(new, start_first=True, handover=h)}, obs) == []
    stray = observed(new, cid="c3", status="exited")
    assert plan({"a": _routed(new, handover=h)}, [*obs, stray]) == [
        Remove("c3", "duplicate container for model 'a'", model="a")]
    # without a handover record the same two are duplicates, as before (a daemon restart: keep the new config's)
    assert plan({"a": _routed(new)}, obs) == [Remove("c1", "duplicate container for model 'a'", model="a")]


def test_after_the_switch_the_old_container_is_removed_once_drained_never_recreated() -> None:
    old, new = desired("a", port=0, ctx=512), desired("a", port=0, ctx=1024)
    obs = [observed(old, cid="c1"), observed(new, cid="c2")]
    assert plan({"a": _routed(new, handover=Handover("c1", "c2", switched=True))}, obs) == []
    assert plan({"a": _routed(new, handover=Handover("c1", "c2", switched=True, drained=True))}, obs) == [
        Remove("c1", "handed over to the new container: drained", model="a")]
    gone_early = [observed(old, cid="c1", status="exited"), observed(new, cid="c2")]
    assert [type(a) for a in plan({"a": _routed(new, handover=Handover("c1", "c2", switched=True))}, gone_early)] \
        == [Remove]


def test_a_change_while_the_old_container_drains_waits_for_it_to_go() -> None:
    old, mid, new = (desired("a", port=0, ctx=c) for c in (512, 1024, 2048))
    obs = [observed(old, cid="c1"), observed(mid, cid="c2")]
    assert plan({"a": _routed(new, start_first=True, handover=Handover("c1", "c2", switched=True))}, obs) == []
    assert plan({"a": _routed(new, start_first=True, handover=Handover("c1", "c2", switched=True, drained=True))},
                obs) == [Remove("c1", "handed over to the new container: drained", model="a"),
                         CreateSuccessor(new, "c2")]


def test_a_failed_successor_is_removed_and_the_change_goes_stop_first() -> None:
    old, new = desired("a", port=0, ctx=512), desired("a", port=0, ctx=1024)
    obs = [observed(old, cid="c1"), observed(new, cid="c2", status="exited")]
    actions = plan({"a": _routed(new, handover=Handover("c1", "c2", failed="exited with code 1"))}, obs)
    assert actions == [Remove("c2", "start-first: the new container failed (exited with code 1); stop-first instead",
                              model="a"), Drain("a", "c1")]


def test_a_further_change_mid_handover_removes_the_successor_and_starts_over() -> None:
    old, mid, new = (desired("a", port=0, ctx=c) for c in (512, 1024, 2048))
    obs = [observed(old, cid="c1"), observed(mid, cid="c2")]
    actions = plan({"a": _routed(new, start_first=True, handover=Handover("c1", "c2"))}, obs)
    assert actions == [Remove("c2", "start-first: the manifest changed again; starting over", model="a"),
                       CreateSuccessor(new, "c1")]
    back = plan({"a": _routed(old, start_first=True, handover=Handover("c1", "c2"))}, obs)
    assert back == [Remove("c2", "start-first: the manifest changed again; starting over", model="a")], \
        "changed back: the old container serves on"


# --- names --------------------------------------------------------------------------------------


def test_successor_names_alternate_within_a_pair_no_model_can_hold() -> None:
    first = container_name("gemma")
    assert successor_name("gemma", beside=first) == first + PAIR_SUFFIX == "llama-supervisor-gemma_b"
    assert successor_name("gemma", beside=first + PAIR_SUFFIX) == first
    assert successor_name("gemma", "two", beside="llama-supervisor-two-gemma") == "llama-supervisor-two-gemma_b"
    # '_' is in no model name: the second name of one model's pair is never another model's first name
    assert container_name("gemma-b") != successor_name("gemma", beside=first)


# --- Demand, per published port ---------------------------------------------------------------------


def test_a_retired_port_takes_no_request_and_counts_only_its_own_in_flight() -> None:
    woken: list[int] = []
    d = Demand(lambda: 0.0, wake=lambda: woken.append(1))
    assert d.enter("a", port=1) and d.enter("a", port=1) and d.enter("a", port=2)
    assert d.retire("a", 1) == 2
    assert not d.enter("a", port=1), "a request that read the old route asks again"
    assert d.enter("a", port=2) and d.inflight_on("a", 2) == 2 and d.usage("a").inflight == 4
    d.leave("a", port=1)
    assert woken == []
    d.leave("a", port=1)
    assert woken == [1] and d.inflight_on("a", 1) == 0, "the last one out of the old container wakes the loop"
    d.unretire("a", 1)
    assert d.enter("a", port=1)


# --- the loop -------------------------------------------------------------------------------------


class Seen(NullMetrics):
    def __init__(self) -> None:
        self.handovers: list[tuple[str, str]] = []
        self.drains: list[tuple[str, int, bool]] = []

    def handover(self, model: str, result: str) -> None:
        self.handovers.append((model, result))

    def drained(self, model: str, requests: int, timed_out: bool) -> None:
        self.drains.append((model, requests, timed_out))


def running(*models: DesiredModel, settings: LoopSettings = LoopSettings(stop_timeout_s=10.0),
            runtime: FakeRuntime | None = None, budget: Budget | None = None) -> tuple[Harness, Seen]:
    h = Harness(list(models) or [desired("a", port=0, ctx=512)], settings=settings, runtime=runtime)
    h.sup.demand._wake = lambda: h.q.put(Tick())        # as the daemon wires it: a leave wakes the loop
    if budget is not None:
        h.sup.ondemand.budget = budget
    metrics = Seen()
    h.sup.metrics = metrics
    h.step()
    h.healthy(*h.sup.slots)
    assert all(h.state(m) is State.RUNNING for m in h.sup.slots)
    h.runtime.calls.clear()
    return h, metrics


def change(h: Harness, ctx: int = 1024, port: int = 0) -> None:
    assert isinstance(h.models, dict)
    h.models["a"] = desired("a", port=port, ctx=ctx, health=HealthPolicy(start_timeout_s=30.0))
    h.step(ManifestsChanged())


def successor(h: Harness) -> str:
    handover = h.sup.slots["a"].handover
    assert handover is not None
    return handover.successor_id


def test_start_first_switches_the_route_when_healthy_and_drains_only_the_old_containers_requests() -> None:
    h, metrics = running()
    demand = h.sup.demand
    old, old_port = h.cid("a"), h.sup.routes()["a"].port
    assert old_port is not None
    assert demand.enter("a", port=old_port) and demand.enter("a", port=old_port)   # in flight on the old one
    change(h)
    assert h.runtime.ops() == ["create", "start", "inspect"], "the new container starts; the old one is left alone"
    new = successor(h)
    assert h.runtime.containers[new].name == container_name("a") + PAIR_SUFFIX
    assert h.state("a") is State.RUNNING and h.cid("a") == old, "the old container serves meanwhile"
    route = h.sup.routes()["a"]
    assert route.state is State.RUNNING and route.port == old_port
    assert demand.enter("a", port=old_port), "new requests go on to the old container: none waits"
    (status,) = h.sup.snapshot()
    assert status.state == "RUNNING" and status.reason == "manifest changed: new container starting beside the old"
    assert status.handover.startswith(f"new container {new[:8]} starting on port ")

    h.clock.advance(0.05)
    h.step()
    assert ("a", new) in h.prober.sent, "the new container is probed like a starting model"
    h.step(ProbeResult("a", new, ProbeOutcome.LOADING, 0.01))
    assert h.cid("a") == old
    h.runtime.calls.clear()
    h.step(ProbeResult("a", new, ProbeOutcome.OK, 0.01))
    new_port = h.runtime.containers[new].host_port
    assert h.cid("a") == new and h.sup.routes()["a"].port == new_port != old_port, "switched in the same pass"
    assert h.state("a") is State.RUNNING and metrics.handovers == [("a", "switched")]
    assert h.runtime.ops() == [], "three requests still in flight on the old container"
    assert not demand.enter("a", port=old_port), "a request that read the old route asks again"
    assert demand.enter("a", port=new_port), "the new container takes new requests at once"
    assert "old container" in h.sup.snapshot()[0].handover

    for _ in range(2):
        demand.leave("a", port=old_port)
        h.step()
    assert h.runtime.ops() == [] and old in h.runtime.containers
    demand.leave("a", port=old_port)            # the last one on the old container (the new one still has one)
    h.sup.iteration(block=False)
    assert h.runtime.ops() == ["stop", "remove"] and old not in h.runtime.containers
    assert metrics.drains == [("a", 3, False)] and h.sup.slots["a"].handover is None
    assert h.sup.snapshot()[0].handover == ""
    assert h.sup.slots["a"].lc.restarts == 1


def test_an_old_container_that_outlasts_the_stop_timeout_is_removed_anyway() -> None:
    h, metrics = running()
    old_port = h.sup.routes()["a"].port
    assert old_port is not None and h.sup.demand.enter("a", port=old_port)
    old = h.cid("a")
    change(h)
    h.step(ProbeResult("a", successor(h), ProbeOutcome.OK, 0.01))
    h.clock.advance(9.9)
    h.step()
    assert old in h.runtime.containers
    assert h.sup._wait_s() <= 0.1 + 1e-9, "the loop wakes at the drain deadline"
    h.clock.advance(0.1)
    h.step()
    assert old not in h.runtime.containers and metrics.drains == [("a", 1, True)]


def test_a_successor_that_exits_is_removed_and_the_change_goes_stop_first() -> None:
    h, metrics = running()
    old = h.cid("a")
    change(h)
    new = successor(h)
    h.runtime.crash(new, code=1)
    with capture_logs() as logs:
        h.step(ContainerEvent(ContainerAction.DIE, new, "a", exit_code=1))
    assert new not in h.runtime.containers and old not in h.runtime.containers
    assert metrics.handovers == [("a", "fell_back")] and h.sup.slots["a"].handover is None
    assert h.state("a") is State.STARTING, "stop-first: drained (nothing in flight), recreated"
    assert any(r["event"] == "start-first: the new container failed; stop-first instead" for r in logs)
    said = [r for r in logs if r["event"].startswith("recreate: stop-first")]
    assert said and said[0]["why_not_start_first"].startswith("the new container failed beside the old one")


def test_a_successor_not_healthy_by_its_start_timeout_is_given_up() -> None:
    h, metrics = running()
    assert h.sup.demand.enter("a", port=h.sup.routes()["a"].port)
    change(h)
    new = successor(h)
    h.clock.advance(29.9)
    h.step(ProbeResult("a", new, ProbeOutcome.LOADING, 0.01))
    assert h.sup.slots["a"].handover is not None
    h.clock.advance(0.1)
    h.step()
    assert new not in h.runtime.containers and metrics.handovers == [("a", "fell_back")]
    assert h.state("a") is State.DRAINING, "stop-first, with the old container's request in flight"


def test_a_further_change_mid_handover_starts_over() -> None:
    h, metrics = running()
    old = h.cid("a")
    change(h, ctx=1024)
    first = successor(h)
    change(h, ctx=2048)
    second = successor(h)
    assert first not in h.runtime.containers and second != first and h.cid("a") == old
    assert h.runtime.containers[second].name == container_name("a") + PAIR_SUFFIX
    assert metrics.handovers == [("a", "cancelled")]
    h.step(ProbeResult("a", second, ProbeOutcome.OK, 0.01))
    assert h.cid("a") == second and old not in h.runtime.containers


def test_a_daemon_restarted_mid_handover_keeps_the_new_config_and_removes_the_old() -> None:
    h, _ = running()
    old = h.cid("a")
    change(h)
    new = successor(h)
    again = Harness([desired("a", port=0, ctx=1024, health=HealthPolicy(start_timeout_s=30.0))], runtime=h.runtime)
    again.step()
    assert again.cid("a") == new and old not in h.runtime.containers
    assert again.state("a") is State.STARTING, "adopted: RUNNING at its first good probe"


def test_stop_first_where_start_first_cannot_be_and_the_log_says_why() -> None:
    cases: list[tuple[str, Harness]] = []
    h, _ = running(desired("a", port=18081))
    cases.append(("host port 18081 is fixed in the manifest", h))
    h, _ = running(settings=LoopSettings(recreate=RecreateMode.STOP_FIRST))
    cases.append(("--recreate stop-first", h))
    one = FakeRuntime()
    one.one_per_model = True           # as the process runtime
    h, _ = running(runtime=one)
    cases.append(("the docker runtime runs one container per model", h))
    h, _ = running(desired("a", port=0), desired("b", port=0), budget=Budget(memory_bytes=int(2.5 * (1 << 30))))
    cases.append(("the memory budget has no room", h))
    for why, h in cases:
        with capture_logs() as logs:
            change(h, port=h.sup.slots["a"].desired.spec.host_port)
        assert "create" in h.runtime.ops() and h.runtime.ops()[0] == "stop", (why, h.runtime.ops())
        said = [r for r in logs if r["event"].startswith("recreate: stop-first")]
        assert len(said) == 1 and said[0]["why_not_start_first"].startswith(why), (why, said)


def test_room_for_both_counts_every_other_models_reservation() -> None:
    h, _ = running(desired("a", port=0), desired("b", port=0), budget=Budget(memory_bytes=3 << 30))
    change(h)
    assert h.runtime.ops() == ["create", "start", "inspect"], "1 GiB old + 1 GiB new + b's 1 GiB fit in 3 GiB"
    loads = h.sup.ondemand._loads(h.sup.slots)
    assert loads["a"].memory_bytes == 2 << 30, "both containers counted while the handover lasts"


def test_status_shows_a_model_in_handover() -> None:
    m = ModelStatus(name="m", state="RUNNING", port=41234, container_id="3f2a9c1d5e6f", image_id=None, uptime_s=60.0,
                    restarts=0, last_exit_code=None, reason="manifest changed: new container starting beside the old",
                    handover="new container 9abc0123 starting on port 41999 beside the old one (start-first)")
    assert describe(m) == ("port 41234, container 3f2a9c1d, uptime 0:01:00, restarts 0, new container 9abc0123 starting"
                           " on port 41999 beside the old one (start-first)")
