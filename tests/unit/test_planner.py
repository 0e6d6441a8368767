"""plan(desired, observed): values in, actions out."""

from __future__ import annotations

from supervisor.core.actions import Create, Recreate, Remove, Start, Stop
from supervisor.core.planner import Want, diff, plan

from .helpers import desired, observed


def test_missing_container_is_created() -> None:
    d = desired("a")
    assert plan({"a": Want(d, run=True)}, []) == [Create(d)]


def test_not_wanted_and_missing_is_left_alone() -> None:
    assert plan({"a": Want(desired("a"), run=False)}, []) == []


def test_unchanged_running_model_yields_no_action() -> None:
    a, b = desired("a"), desired("b", port=8082)
    obs = [observed(a), observed(b)]
    assert plan({"a": Want(a, run=True), "b": Want(b, run=True)}, obs) == []


def test_hash_change_recreates() -> None:
    old, new = desired("a", ctx=512), desired("a", ctx=1024)
    assert plan({"a": Want(new, run=True)}, [observed(old, cid="c1")]) == [Recreate(new, "c1")]


def test_stopped_container_with_same_hash_is_started_in_place() -> None:
    d = desired("a")
    assert plan({"a": Want(d, run=True)}, [observed(d, cid="c1", status="exited")]) == [Start("a", "c1")]


def test_not_wanted_running_container_is_stopped_gracefully() -> None:
    d = desired("a")
    assert plan({"a": Want(d, run=False)}, [observed(d, cid="c1")]) == [Stop("a", "c1", "stop requested")]


def test_hung_container_is_killed_and_started_in_place() -> None:
    d = desired("a")
    acts = plan({"a": Want(d, run=True, live=False)}, [observed(d, cid="c1", status="paused")])
    assert acts == [Stop("a", "c1", "failed or hung: restart in place", kill=True), Start("a", "c1")]


def test_failed_container_in_backoff_is_killed_not_started() -> None:
    d = desired("a")
    acts = plan({"a": Want(d, run=False, live=False)}, [observed(d, cid="c1")])
    assert [type(x) for x in acts] == [Stop] and acts[0].kill  # type: ignore[union-attr]


def test_orphans_are_removed() -> None:
    d = desired("a")
    acts = plan({"a": Want(d, run=True)}, [observed(d), observed("gone", cid="c9")])
    assert acts == [Remove("c9", "orphan: no manifest for model 'gone'", model="gone")]


def test_duplicates_keep_the_matching_running_one() -> None:
    d = desired("a")
    obs = [observed(d, cid="c-old", config_hash="f" * 64), observed(d, cid="c-good"),
           observed(d, cid="c-stopped", status="exited")]
    acts = plan({"a": Want(d, run=True)}, obs)
    assert sorted(a.container_id for a in acts if isinstance(a, Remove)) == ["c-old", "c-stopped"]
    assert not [a for a in acts if not isinstance(a, Remove)]


def test_changed_but_not_wanted_running_is_stopped_not_recreated() -> None:
    old, new = desired("a", ctx=512), desired("a", ctx=1024)
    acts = plan({"a": Want(new, run=False)}, [observed(old, cid="c1")])
    assert [type(x) for x in acts] == [Stop]
    assert plan({"a": Want(new, run=False)}, [observed(old, cid="c1", status="exited")]) == []


def test_diff() -> None:
    a, b, b2, c = desired("a"), desired("b"), desired("b", ctx=1024), desired("c")
    d = diff({"a": a, "b": b}, {"b": b2, "c": c})
    assert (d.added, d.changed, d.removed) == (("c",), ("b",), ("a",))
    assert diff({"a": a}, {"a": desired("a")}).empty


def test_a_serving_container_whose_config_changed_is_drained_before_it_is_recreated() -> None:
    from supervisor.core.actions import Drain, Resume
    from supervisor.core.planner import Serving
    old, new = desired("a", ctx=512), desired("a", ctx=1024)
    obs = [observed(old, cid="c1")]
    assert plan({"a": Want(new, run=True, serving=Serving.ROUTED)}, obs) == [Drain("a", "c1")]
    assert plan({"a": Want(new, run=True, serving=Serving.DRAINING)}, obs) == [], "requests still in flight"
    assert plan({"a": Want(new, run=True, serving=Serving.DRAINED)}, obs) == [Recreate(new, "c1")]
    # changed back while it drained: it serves again, no recreate
    assert plan({"a": Want(old, run=True, serving=Serving.DRAINING)}, obs) == [Resume("a", "c1")]
    assert plan({"a": Want(old, run=True, serving=Serving.ROUTED)}, obs) == []
    # the draining container exited meanwhile: nothing left to drain
    gone = [observed(old, cid="c1", status="exited")]
    assert plan({"a": Want(new, run=True, serving=Serving.DRAINING)}, gone) == [Recreate(new, "c1")]


def test_a_container_still_loading_is_killed_not_stopped_gracefully() -> None:
    """llama-server ignores SIGTERM until it has loaded (PID 1 in its container): a graceful stop would wait
    out the stop timeout for a server that has answered nothing and holds no cache."""
    d = desired("a")
    acts = plan({"a": Want(d, run=False, loaded=False)}, [observed(d, cid="c1")])
    assert len(acts) == 1 and isinstance(acts[0], Stop) and acts[0].kill
    assert acts[0].reason.startswith("stop requested; still loading")


def test_a_config_change_while_loading_kills_the_old_container() -> None:
    old, new = desired("a", ctx=512), desired("a", ctx=1024)
    assert plan({"a": Want(new, run=True, loaded=False)}, [observed(old, cid="c1")]) == [
        Recreate(new, "c1", kill_old=True)]
    assert plan({"a": Want(new, run=True)}, [observed(old, cid="c1")]) == [Recreate(new, "c1")]
    acts = plan({"a": Want(new, run=False, loaded=False)}, [observed(old, cid="c1")])
    assert [(type(x), x.kill) for x in acts] == [(Stop, True)]  # type: ignore[union-attr]
    assert plan({"a": Want(new, run=True, loaded=False)}, [observed(old, cid="c1", status="exited")]) == [
        Recreate(new, "c1")]                              # nothing up to stop
