"""A flood of events (docs/SECURITY.md, 'Resource exhaustion'): the loop drains it in bounded batches,
with Docker calls that do not grow with the flood and memory that stays small."""

from __future__ import annotations

import tracemalloc

from supervisor.core.events import ContainerAction, ContainerEvent, ProbeResult
from supervisor.core.lifecycle import ProbeOutcome, State

from .helpers import desired
from .test_loop import Harness


def test_a_flood_of_foreign_events_costs_one_list_per_batch_and_little_memory() -> None:
    h = Harness([desired("a")])
    h.step()
    h.healthy("a")
    h.runtime.calls.clear()
    tracemalloc.start()
    n = 20_000
    for i in range(n):       # a container restarting in a loop that is not ours, and stale probe results
        cid = f"foreign{i % 50}"
        h.q.put(ContainerEvent(ContainerAction.START, cid, "a"))
        h.q.put(ContainerEvent(ContainerAction.DIE, cid, "a", exit_code=1))
        h.q.put(ProbeResult("a", cid, ProbeOutcome.FAILED, 0.01, "late"))
    iterations = 0
    while not h.q.empty():
        h.sup.iteration(block=False)
        iterations += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ops = h.runtime.ops()
    assert iterations <= 3 * n // 256 + 1                     # batches of at most 256 events
    assert set(ops) <= {"list"} and len(ops) <= iterations    # no inspect per event; a list per batch at most
    assert h.state("a") is State.RUNNING                      # the model was not disturbed
    assert peak < 64 << 20, peak
