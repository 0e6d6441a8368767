"""`python -m bench.run --only swaps-kv`: a returning conversation after a swap, with the KV cache kept and off
(issue 17 §1). One real llama-supervisord, budget for one on-demand model (1g each, 1500m budget):

  1. ask A (a ~1,500-token shared prefix + question 1): the cold prefill;
  2. ask A again (same prefix, question 2): A never stopped, the floor;
  3. ask B, which evicts A (A's slot is saved when A keeps its cache);
  4. `llama-supervisorctl start A` (the restore runs before A turns RUNNING), then ask A (same prefix,
     question 3): its time to first token (a 1-token answer) and llama-server's `timings.prompt_n`.

A is `kv-on` (kv_cache kept, the default for on-demand models; the demo model is a sliding-window model, so
with --swa-full) and `kv-off` (kv_cache.keep: false); each is measured on its own in the same daemon.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from bench.stats import of

if TYPE_CHECKING:
    from bench.run import Report      # run as `-m bench.run`, that module is __main__: never isinstance against it

CTL = str(Path(sys.executable).with_name("llama-supervisorctl"))
START_S = 120        # health.start_timeout: only a deadline (a loaded machine's start is slow); never a figure
LOADED = 3.0         # a 1-minute load average above this: the figures are noted as taken on a busy machine
WORDS = ("river", "stone", "market", "lantern", "harbour", "orchard", "signal", "ledger", "meadow", "copper",
         "engine", "window", "garden", "bridge", "council", "winter", "cellar", "compass", "thread", "summit")


def prefix(n_words: int = 1150) -> str:
    """A deterministic document of ~1,500 demo-model tokens."""
    body = " ".join(f"{WORDS[(i * 7) % len(WORDS)]}{i % 13}" if i % 9 == 0 else WORDS[(i * 3) % len(WORDS)]
                    for i in range(n_words))
    return f"Read the following notes carefully.\n\n{body}\n\n"


def ask(gateway: str, model: str, text: str) -> tuple[float, int]:
    """(seconds to the 1-token answer, prompt tokens llama-server processed)."""
    t0 = time.perf_counter()
    r = httpx.post(f"{gateway}/v1/completions", timeout=3 * START_S, trust_env=False,
                   json={"model": model, "prompt": text, "max_tokens": 1, "temperature": 0, "cache_prompt": True})
    took = time.perf_counter() - t0
    r.raise_for_status()
    return took, int(r.json()["timings"]["prompt_n"])


def bench_swaps_kv(r: Report, *, quick: bool = False) -> None:
    import docker

    from bench import live
    from supervisor.artifacts.modelsrc import cache_path
    from tests.integration.daemon_harness import Daemon, model_yaml, remove_models

    runs = 3 if quick else 5
    demo = cache_path(live.DEMO_SHA256, live.DEMO_FILE)
    tag = uuid.uuid4().hex[:6]
    on, off, other = f"bench-kv{tag}-on", f"bench-kv{tag}-off", f"bench-kv{tag}-b"
    client = docker.from_env()
    base = prefix()
    with tempfile.TemporaryDirectory(prefix="bench-kv-") as tmp:
        d = Path(tmp)
        (d / "m").mkdir()
        serving = "lifecycle: on-demand\nidle_ttl: 600\n"
        for name, kv in ((on, ""), (off, "kv_cache:\n  keep: false\n"), (other, "")):
            (d / "m" / f"{name}.yaml").write_text(
                model_yaml(name, None, demo, live.DEMO_SHA256, ctx=2048, memory="1g", serving=serving,
                           start_timeout=START_S) + kv)
        # The stop timeout an operator gets (the harness's 3 s would leave a save 1 s of it under load).
        daemon = Daemon(d / "m", extra=["--memory-budget", "1500m", "--stop-timeout", "10"],
                        env={"LLAMA_SUPERVISOR_KV_DIR": str(d / "kv")}).start()
        sock = str(daemon.sockdir / "ctl.sock")
        figures: dict[str, dict[str, list[float]]] = {n: {"cold": [], "warm": [], "back": [], "cold_n": [],
                                                          "warm_n": [], "back_n": [], "swap": []} for n in (on, off)}
        loads: list[float] = []
        try:
            daemon.wait_log(lambda rec: rec.get("event") == "ready", 60, "daemon ready")
            for i in range(runs):
                for a in (on, off):
                    loads.append(os.getloadavg()[0])
                    f = figures[a]
                    doc = f"Notes set {i} for {a}.\n" + base   # the cold figure never starts from an older cache
                    t, n = ask(daemon.gateway, a, doc + f"Run {i}. Question 1: which word comes first?")
                    f["cold"].append(t)
                    f["cold_n"].append(n)
                    t, n = ask(daemon.gateway, a, doc + f"Run {i}. Question 2: which word comes last?")
                    f["warm"].append(t)
                    f["warm_n"].append(n)
                    ask(daemon.gateway, other, "Hello")                       # evicts A
                    t0 = time.perf_counter()
                    subprocess.run([CTL, "--socket", sock, "start", a], check=True, capture_output=True,
                                   timeout=2 * START_S)
                    f["swap"].append(time.perf_counter() - t0)
                    t, n = ask(daemon.gateway, a, doc + f"Run {i}. Question 3: how many notes are there?")
                    f["back"].append(t)
                    f["back_n"].append(n)
                    subprocess.run([CTL, "--socket", sock, "stop", a], check=True, capture_output=True, timeout=120)
        finally:
            kv_events = [rec for _, rec in daemon.lines if str(rec.get("event", "")).startswith("kv cache")
                         and rec.get("model") == on]
            daemon.terminate()
            remove_models(client, [on, off, other])
    on_f, off_f = figures[on], figures[off]
    prefix_n = statistics.median(on_f["cold_n"])
    warm = of(on_f["warm"])
    back_on, back_off = of(on_f["back"]), of(off_f["back"])
    r.time_row("A's first answer, cold prefill (kept)", of(on_f["cold"]))
    r.time_row("A again, never stopped (the floor)", warm)
    r.time_row("A after B evicted it, KV cache off (re-prefill)", of(off_f["back"]), floor=warm.median)
    r.time_row("A after B evicted it, KV cache kept", back_on, floor=warm.median,
               target="<= 15 % of re-prefill and <= 1.3x never stopped",
               limit=min(0.15 * back_off.median, 1.3 * warm.median))
    r.time_row("`start A` after the eviction (kept: start + restore)", of(on_f["swap"]))
    r.time_row("`start A` after the eviction (off)", of(off_f["swap"]))
    back_n_on, back_n_off = statistics.median(on_f["back_n"]), statistics.median(off_f["back_n"])
    r.value_row("prompt tokens processed: first answer", f"{prefix_n:.0f}")
    r.value_row("prompt tokens processed: A back, KV cache off", f"{back_n_off:.0f}")
    r.value_row("prompt tokens processed: A back, KV cache kept", f"{back_n_on:.0f}",
                target="<= 5 % of the prefix", met=back_n_on <= 0.05 * prefix_n)
    def count(event: str) -> int:
        return sum(1 for rec in kv_events if rec["event"] == event)

    saved, restored = count("kv cache: saved"), count("kv cache: restored")
    r.value_row("A (kept): slots saved / restored", f"{saved} / {restored}", target=f">= {2 * runs} / >= {runs}",
                met=saved >= 2 * runs and restored >= runs)
    for rec in kv_events:
        if rec.get("level") == "warning":
            said = ", ".join(f"{k}={v}" for k, v in rec.items() if k not in ("event", "level", "timestamp"))
            r.notes.append(f"The daemon said: {rec['event']} ({said})")
    load = statistics.median(loads)
    r.notes.append(f"1-minute load average at the start of each A's turn: median {load:.1f}, max {max(loads):.1f} "
                   f"(on {os.cpu_count()} cores)" + (
                       f". **The machine was loaded** (over {LOADED:g}): the times are slower and noisier than on "
                       f"a quiet host and are to be taken again there; the prompt-token counts do not depend on "
                       f"load." if load > LOADED else "."))
    r.notes.append(f"Each answer is 1 token (`max_tokens: 1`), so its time is the time to first token; "
                   f"{runs} runs, medians. The restore happens inside `start` (before the model turns RUNNING), "
                   f"so the last row's time is prefill of the new tokens only.")
    r.how.append(("swaps-kv", "`.venv/bin/python -m bench.run --only swaps-kv --out docs/BENCHMARKS.md`"))
