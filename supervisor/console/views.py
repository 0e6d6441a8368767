"""What each page shows, as plain values (strings formatted here, once): the server renders them into
the first paint (pages.py) and sends the same values as JSON over the event stream, which the page's
script puts in place with textContent. Pure: no I/O, no clock of its own."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from supervisor.core.activity import Request
from supervisor.core.status import HELD_TEXT, ModelStatus

START_FROM = frozenset({"STOPPED", "EXITED", "BACKOFF", "FATAL"})
STOP_FROM = frozenset({"STARTING", "RUNNING", "DRAINING", "BACKOFF"})
RESTART_FROM = frozenset({"RUNNING", "STARTING"})
UNLOAD_FROM = frozenset({"RUNNING", "STARTING"})     # on-demand models only: stopped as an idle stop would


def duration(s: float | None) -> str:
    if s is None:
        return "—"
    s = max(0, int(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def seconds(s: float | None, digits: int = 2) -> str:
    return "—" if s is None else f"{s:.{digits}f} s"


@dataclass(frozen=True)
class Budgets:
    memory_bytes: int | None
    gpu_memory_bytes: int | None


def model_view(m: ModelStatus, budget: int | None, variants: Mapping[str, str], runtime: str) -> dict[str, Any]:
    """One model card: name, state, reason, fields [(label, text)], memory bar, the actions it offers."""
    image = variants.get(m.image_id or "", (m.image_id or "")[7:19] or "—")
    used = f", using {size(m.memory_used)}" if m.memory_used is not None else ""
    counted = size(m.memory_counted) + (f" ({m.memory_basis})" if m.memory_basis else "") + used
    fields = [
        ("Lifecycle", m.lifecycle + (f" · {HELD_TEXT}" if m.held else "")),
        ("Aliases", ", ".join(m.aliases) or "—"),
        ("Runtime", f"{runtime} · {image}"),
        ("Port", str(m.port) if m.port else "—"),
        ("Uptime", duration(m.uptime_s)),
        ("Restarts", restarts(m)),
        ("Last exit code", "—" if m.last_exit_code is None else str(m.last_exit_code)),
        ("Memory counted", counted),
        ("Last request", "never" if m.idle_s is None else duration(m.idle_s) + " ago"),
        ("Idle stop in", duration(m.ttl_left_s) if m.ttl_left_s is not None else "—"),
        ("In flight / waiting", f"{m.inflight} / {m.waiting}"),
        ("Verified", m.verified or "—"),
        ("KV cache kept", kv_cache(m)),
    ]
    offered = [("start", START_FROM), ("stop", STOP_FROM), ("restart", RESTART_FROM)]
    if m.lifecycle == "on-demand":
        offered.append(("unload", UNLOAD_FROM))
    actions = [a for a, states in offered if m.state in states]
    bar = None
    if m.memory_counted:
        bar = {"value": m.memory_counted, "max": max(budget or 0, m.memory_counted),
               "label": f"{size(m.memory_counted)} of the {size(budget)} budget" if budget
               else f"{size(m.memory_counted)} (no budget)"}
    return {"name": m.name, "state": m.state, "reason": m.reason, "fields": fields, "bar": bar, "actions": actions}


def restarts(m: ModelStatus) -> str:
    """Restarts, the failed starts counted toward FATAL, and the backoff time left."""
    text = str(m.restarts)
    if m.failures:
        text += f" · {m.failures} of {m.max_failures} failed starts before FATAL" if m.max_failures \
            else f" · {m.failures} failed starts"
    if m.retry_in_s is not None:
        text += f" · retry in {m.retry_in_s:.1f}s"
    return text


def kv_cache(m: ModelStatus) -> str:
    if m.kv_tokens is None:
        return m.kv_note or "no"
    return f"{m.kv_tokens} tokens, {size(m.kv_bytes or 0)} on disk"


def models_view(statuses: Iterable[ModelStatus], budgets: Budgets, variants: Mapping[str, str],
                runtime: str) -> dict[str, Any]:
    models = [model_view(m, budgets.memory_bytes, variants, runtime) for m in statuses]
    counted = sum(m.memory_counted or 0 for m in statuses if m.state in STOP_FROM or m.state == "STOPPING")
    total = None
    if budgets.memory_bytes:
        total = {"value": min(counted, budgets.memory_bytes), "max": budgets.memory_bytes,
                 "label": f"{size(counted)} of {size(budgets.memory_bytes)} counted by loaded models"}
    return {"models": models, "budget": total}


ACTIVITY_COLUMNS = ("Time", "Model", "Status", "Queue wait", "First token", "Tokens", "Tokens/s", "Duration",
                    "Client")


def request_row(r: Request, now_wall: float) -> list[str]:
    when = time.strftime("%H:%M:%S", time.localtime(r.started))
    if r.duration_s is None:
        return [when, r.model or "?", "in flight", seconds(r.queue_wait_s), seconds(r.ttft_s), "—", "—",
                seconds(now_wall - r.started, 1), "waiting"]
    tps = r.tokens_per_s
    return [when, r.model or "?", str(r.status), seconds(r.queue_wait_s), seconds(r.ttft_s if r.streamed else None),
            "—" if r.tokens is None else str(r.tokens), "—" if tps is None else f"{tps:.1f}",
            seconds(r.duration_s), "went away" if r.client_gone else "stayed"]


def activity_view(inflight: Iterable[Request], done: Iterable[Request], now_wall: float) -> dict[str, Any]:
    return {"inflight": [request_row(r, now_wall) for r in inflight],
            "done": [request_row(r, now_wall) for r in done]}
