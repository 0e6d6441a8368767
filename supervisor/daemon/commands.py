"""Control commands (start, stop, restart, unload, reread, update, reload, shutdown): `Commands` runs them and
answers their waiters when the models get there."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import assert_never

from supervisor.core.commands import (
    Command,
    CommandResult,
    ModelResult,
    Reload,
    Reread,
    RestartModels,
    Shutdown,
    StartModels,
    StopModels,
    Unload,
    Update,
)
from supervisor.core.demand import Demand
from supervisor.core.lifecycle import State, Transition
from supervisor.core.planner import Diff
from supervisor.daemon.state import Slot, Waiter


class Commands:
    """Runs control commands on the slots it is given and holds their waiters until the models get
    there (or the command times out). Reading the manifests and shutting down are the loop's: they
    come in as `reload` and `shutdown`."""

    def __init__(self, command_timeout_s: float) -> None:
        self._timeout_s = command_timeout_s
        self._waiters: list[Waiter] = []
        self._after_reconcile: list[tuple[Future[CommandResult], CommandResult]] = []   # Reload answers

    def deadlines(self) -> list[float]:
        """When waiters give up (the loop wakes then)."""
        return [w.deadline for w in self._waiters]

    def handle(
        self,
        cmd: Command,
        fut: Future[CommandResult],
        *,
        slots: Mapping[str, Slot],
        now: float,
        reload: Callable[[bool, str], tuple[Diff | None, list[str]]],
        shutdown: Callable[[bool], None],
        demand: Demand | None = None,
    ) -> list[Transition]:
        """Run `cmd`; returns the lifecycles' transitions, in the order they happened. `reload(apply,
        origin)` reads the manifests (the diff, or None and the problems); `shutdown(stop_models)`;
        `demand`: the gateway's requests (an on-demand model started here counts as used now, as the
        scheduler's starts do, so its idle TTL runs from now; an unload drains it first)."""
        out: list[Transition] = []

        def did(t: Transition | None) -> None:
            if t is not None:
                out.append(t)

        if not fut.set_running_or_notify_cancel():
            return out
        match cmd:
            case StartModels(names=names, wait=wait) | RestartModels(names=names, wait=wait):
                known, unknown = _names(names, slots)
                for n in known:
                    lc = slots[n].lc
                    if demand is not None and slots[n].desired.serving.on_demand:
                        demand.undrain(n)
                        demand.touch(n)
                    if isinstance(cmd, RestartModels) and lc.live:
                        did(lc.stop_requested(now, disable=False, reason="restart requested"))
                    else:
                        did(lc.start_requested(now))
                if wait and known:
                    self._waiters.append(Waiter("start", known, fut, now + self._timeout_s, unknown))
                else:
                    fut.set_result(CommandResult(ok=not unknown, results=tuple(
                        ModelResult(n, True, "starting") for n in known), unknown=unknown))
            case StopModels(names=names):
                known, unknown = _names(names, slots)
                for n in known:
                    did(slots[n].lc.stop_requested(now))
                self._waiters.append(Waiter("stop", known, fut, now + self._timeout_s, unknown))
            case Unload(names=names):
                known, unknown = _names(names, slots)
                if "all" in names:
                    known = tuple(n for n in known if slots[n].desired.serving.on_demand)
                drain = demand.try_drain if demand is not None else (lambda _name: True)
                stopping, refused = _unload(known, slots, now, drain, did)
                self._waiters.append(Waiter("stop", stopping, fut, now + self._timeout_s, unknown, answered=refused))
            case Reread():
                fut.set_result(_diff_result(*reload(False, "reread")))
            case Update():
                fut.set_result(_diff_result(*reload(True, "update")))
            case Reload():
                self._after_reconcile.append((fut, _diff_result(*reload(True, "reload"))))
            case Shutdown(stop_models=stop_models):
                shutdown(stop_models)
                fut.set_result(CommandResult(ok=True))
            case _:
                assert_never(cmd)
        return out

    def check_waiters(self, slots: Mapping[str, Slot], now: float) -> None:
        """Answer the waiters whose models got there, or whose time ran out."""
        keep: list[Waiter] = []
        for w in self._waiters:
            results: list[ModelResult] = list(w.answered)
            pending = False
            for n in w.names:
                slot = slots.get(n)
                if slot is None:
                    results.append(ModelResult(n, False, "disappeared from the manifests"))
                    continue
                st = slot.lc.state
                if w.kind == "start":
                    if st is State.RUNNING:
                        results.append(ModelResult(n, True, "started"))
                    elif st in (State.FATAL, State.BACKOFF, State.EXITED):
                        results.append(ModelResult(n, False, f"{st.name}: {slot.lc.reason}"))
                    elif st is State.STOPPED and not slot.lc.enabled:
                        # a stop came before it was running: it will not get there (it waited 300 s for that)
                        results.append(ModelResult(n, False, f"stopped before it was running: {slot.lc.reason}"))
                    else:
                        pending = True
                else:
                    if st in (State.STOPPED, State.FATAL, State.EXITED, State.BACKOFF):
                        results.append(ModelResult(n, True, "stopped"))
                    else:
                        pending = True
            if pending and now < w.deadline:
                keep.append(w)
                continue
            if pending:
                results.append(ModelResult(",".join(w.names), False, "timed out waiting"))
            w.future.set_result(CommandResult(ok=all(r.ok for r in results) and not w.unknown,
                                              results=tuple(results), unknown=w.unknown))
        self._waiters = keep

    def answer_reloads(self) -> None:
        """After a reconcile: answer the reloads (their models have been planned for)."""
        for fut, result in self._after_reconcile:
            fut.set_result(result)
        self._after_reconcile.clear()

    def fail_waiters(self, error: str) -> None:
        for w in self._waiters:
            w.future.set_result(CommandResult(ok=False, error=error))
        self._waiters.clear()


def _unload(names: tuple[str, ...], slots: Mapping[str, Slot], now: float, drain: Callable[[str], bool],
            did: Callable[[Transition | None], None]) -> tuple[tuple[str, ...], tuple[ModelResult, ...]]:
    """Stop each on-demand model as its idle TTL would (once nothing is in flight; it stays loadable):
    (the names stopping, the results of those refused)."""
    stopping: list[str] = []
    refused: list[ModelResult] = []
    for n in names:
        slot = slots[n]
        if not slot.desired.serving.on_demand:
            refused.append(ModelResult(n, False, "not an on-demand model: unload is for lifecycle: on-demand"
                                       f" (fix: 'llama-supervisorctl stop {n}')"))
        elif not slot.lc.live:
            refused.append(ModelResult(n, True, f"not loaded ({slot.lc.state.name})"))
        elif not drain(n):
            refused.append(ModelResult(n, False, "requests are in flight or waiting; not unloaded"
                                       f" (fix: unload it when they are done, or 'llama-supervisorctl stop {n}')"))
        else:
            did(slot.lc.stop_requested(now, reason="unloaded by the operator"))
            stopping.append(n)
    return tuple(stopping), tuple(refused)


def _names(names: tuple[str, ...], slots: Mapping[str, Slot]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if "all" in names:
        return tuple(sorted(slots)), ()
    return tuple(n for n in names if n in slots), tuple(n for n in names if n not in slots)


def _diff_result(d: Diff | None, problems: list[str]) -> CommandResult:
    if d is None:
        return CommandResult(ok=False, error="\n".join(problems) or "manifests are invalid")
    results = [ModelResult(n, True, "available") for n in d.added]
    results += [ModelResult(n, True, "changed") for n in d.changed]
    results += [ModelResult(n, True, "disappeared") for n in d.removed]
    return CommandResult(ok=True, results=tuple(results))
