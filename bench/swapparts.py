"""`python -m bench.run --only swap-parts`: where a Docker swap's time goes, at the runtime's seam (issue 17 §4).

A swap on Docker to a model not held ready (`--no-standby`, or past `--standby-max`) starts the new
model's container up to its gate beside the old model's stop (`Runtime.prepare`, docs/DESIGN.md
"Prepared starts"), then releases it. This section takes
the daemon out and times `DockerRuntime` itself, on three containers of the daemon's own spec for the
demo model (bench/live.py Floor), created held (`llama-gate`) as an on-demand model's are: A loaded, B the
one to start, C another one held at its gate; and D, the same spec created plain (llama-server as the
entrypoint). Each round runs these in a rotating order, each from the first call to the started container's
first /health 200 (5 ms poll):

- **a plain container, nothing stopped**: `start(D)`: what the gate's release adds, against the next row;
- **prepared, nothing stopped**: `prepare(B)` then `start(B)` at once, A left running: the engine's start,
  the gate's release, the load;
- **no head start: stop A, then start B**: `stop(A)` (a loaded llama-server), then `start(B)`: a swap as it
  was before prepared starts;
- **prepared beside A's stop**: `prepare(B)`, `stop(A)`, `start(B)`: a swap as the daemon makes it;
- **prepared beside C's stop**: the same, but the container stopped holds only its gate: the engine's
  teardown without llama-server's exit (unmapping its model);
- **armed long before, beside A's stop**: B started up to its gate 2.5 s earlier (what standby, the
  default, does after a stop), then `stop(A)`, `start(B)`.

The differences are medians of each round's differences: what A's stop costs the prepared start, how much
of that is the engine's teardown (the part a gate outliving llama-server could defer) and how much is
llama-server's exit (which the router pays too), and what the head start of standby is worth.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from bench import live
from bench.stats import of
from tests.integration.daemon_harness import healthy

if TYPE_CHECKING:
    from bench.run import Report

POLL_S = 0.005
REST_S = 2.5          # before each measurement: what the last one left (an arm, a teardown) is over
KINDS = ("a plain container (no gate), nothing stopped", "prepared, nothing stopped", "no head start: stop A, then start B", "prepared beside A's stop",
         "prepared beside C's stop (its gate only)", "armed long before, beside A's stop")


def bench_swap_parts(r: Report, *, quick: bool, rounds: int | None = None) -> None:
    from supervisor.runtime.docker.runtime import DockerRuntime
    from supervisor.runtime.docker.standby import Gates

    n = 2 if quick else (rounds or 10)
    demo = live.demo_model()
    gates = Path(tempfile.mkdtemp(prefix="bench-swap-parts-"))
    rt = DockerRuntime(gates=Gates(gates), instance=f"bench-{uuid.uuid4().hex[:4]}")
    a_f, b_f, c_f, d_f = live.Floor(demo), live.Floor(demo), live.Floor(demo), live.Floor(demo)
    made: list[str] = []
    got: dict[str, list[float]] = {k: [] for k in KINDS}
    try:
        for f in (a_f, b_f, c_f, d_f):
            cid = rt.create(f.spec, held=f is not d_f)
            made.append(cid)
            rt.start(cid)
            live.until_healthy(f.port)                      # each loaded once: the model in the page cache
            rt.stop(cid, timeout_s=10)
        a, b, c, d = made
        for i in range(n):
            for kind in KINDS[i % len(KINDS):] + KINDS[:i % len(KINDS)]:
                if not healthy(a_f.port):
                    rt.start(a)
                    live.until_healthy(a_f.port)
                rt.prepare(c)                               # C waits at its gate (a no-op once it does)
                if kind.startswith("armed"):
                    rt.prepare(b)
                time.sleep(REST_S)
                t0 = time.monotonic()
                if kind.startswith("prepared"):
                    rt.prepare(b)
                if "A's stop" in kind or "stop A" in kind:
                    rt.stop(a, timeout_s=10)
                elif "C's stop" in kind:
                    rt.stop(c, timeout_s=10)
                target, port = (d, d_f.port) if kind.startswith("a plain") else (b, b_f.port)
                rt.start(target)
                got[kind].append(live.until_healthy(port, step=POLL_S) - t0)
                rt.stop(target, timeout_s=10)
            print("  swap-parts round", i + 1, {k.split(":")[0][:28]: round(v[-1], 3) for k, v in got.items()},
                  flush=True)
    finally:
        for cid in made:
            try:
                rt.remove(cid)
            except Exception:  # noqa: BLE001 - cleanup: the next run's names are new
                pass
        rt.close()
        shutil.rmtree(gates, ignore_errors=True)
    base = of(got["prepared, nothing stopped"]).median
    for kind in KINDS:
        r.time_row(f"{kind}: first call -> /health 200", of(got[kind]), floor=base)

    def paired(x: str, y: str) -> str:
        d = [p - q for p, q in zip(got[x], got[y], strict=True)]
        return f"{statistics.median(d):+.3f} s (min {min(d):+.3f}, max {max(d):+.3f})"

    r.value_row("the gate's release (prepared, nothing stopped - a plain container)",
                paired("prepared, nothing stopped", "a plain container (no gate), nothing stopped"))
    r.value_row("A's stop, what it costs the prepared start (beside A's stop - nothing stopped)",
                paired("prepared beside A's stop", "prepared, nothing stopped"))
    r.value_row("  of it, the engine's teardown (beside C's stop - nothing stopped)",
                paired("prepared beside C's stop (its gate only)", "prepared, nothing stopped"))
    r.value_row("  of it, llama-server's exit (beside A's stop - beside C's stop)",
                paired("prepared beside A's stop", "prepared beside C's stop (its gate only)"))
    r.value_row("what preparing saves a swap (no head start - prepared beside A's stop)",
                paired("no head start: stop A, then start B", "prepared beside A's stop"))
    r.value_row("what arming long before (--standby) saves a swap (prepared - armed, both beside A's stop)",
                paired("prepared beside A's stop", "armed long before, beside A's stop"))
    r.how.append(("this section", "after `make setup`: `.venv/bin/python -m bench.run --only swap-parts --rounds 10 "
                                   "--out docs/BENCHMARKS.md` (about 6 min on 2 cores)"))
    r.notes.append(
        "Ratios are to `prepared, nothing stopped`. The differences are medians of each round's own difference, "
        "so a slow round moves both sides. `stop` returns once the process is gone (a pidfd, or the engine's "
        "`die`); the engine's teardown runs after it, beside the next calls.")
