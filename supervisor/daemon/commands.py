"""The loop's part that executes control commands (start, stop, restart, reread, update, reload,
shutdown) and answers their waiters when the models get there."""

from __future__ import annotations

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
    Update,
)
from supervisor.core.lifecycle import State
from supervisor.core.planner import Diff
from supervisor.daemon.state import LoopState, Waiter


class Commands(LoopState):
    def _names(self, names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if "all" in names:
            return tuple(sorted(self.slots)), ()
        return tuple(n for n in names if n in self.slots), tuple(n for n in names if n not in self.slots)

    def _on_command(self, cmd: Command, fut: Future[CommandResult]) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        now = self.clock()
        match cmd:
            case StartModels(names=names, wait=wait) | RestartModels(names=names, wait=wait):
                known, unknown = self._names(names)
                for n in known:
                    lc = self.slots[n].lc
                    if isinstance(cmd, RestartModels) and lc.live:
                        self._log_transition(lc.stop_requested(now, disable=False, reason="restart requested"))
                    else:
                        self._log_transition(lc.start_requested(now))
                if wait and known:
                    self._waiters.append(Waiter("start", known, fut, now + self.settings.command_timeout_s,
                                                unknown))
                else:
                    fut.set_result(CommandResult(ok=not unknown, results=tuple(
                        ModelResult(n, True, "starting") for n in known), unknown=unknown))
            case StopModels(names=names):
                known, unknown = self._names(names)
                for n in known:
                    self._log_transition(self.slots[n].lc.stop_requested(now))
                self._waiters.append(Waiter("stop", known, fut, now + self.settings.command_timeout_s, unknown))
            case Reread():
                d = self._reload(apply=False, origin="reread")
                fut.set_result(_diff_result(d, self.problems))
            case Update():
                d = self._reload(apply=True, origin="update")
                fut.set_result(_diff_result(d, self.problems))
            case Reload():
                d = self._reload(apply=True, origin="reload")
                self._after_reconcile.append((fut, _diff_result(d, self.problems)))
            case Shutdown(stop_models=stop_models):
                self._begin_shutdown(stop_models=stop_models)
                fut.set_result(CommandResult(ok=True))
            case _:
                assert_never(cmd)

    def _check_waiters(self, now: float) -> None:
        keep: list[Waiter] = []
        for w in self._waiters:
            results: list[ModelResult] = []
            pending = False
            for n in w.names:
                slot = self.slots.get(n)
                if slot is None:
                    results.append(ModelResult(n, False, "disappeared from the manifests"))
                    continue
                st = slot.lc.state
                if w.kind == "start":
                    if st is State.RUNNING:
                        results.append(ModelResult(n, True, "started"))
                    elif st in (State.FATAL, State.BACKOFF, State.EXITED):
                        results.append(ModelResult(n, False, f"{st.name}: {slot.lc.reason}"))
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


def _diff_result(d: Diff | None, problems: list[str]) -> CommandResult:
    if d is None:
        return CommandResult(ok=False, error="\n".join(problems) or "manifests are invalid")
    results = [ModelResult(n, True, "available") for n in d.added]
    results += [ModelResult(n, True, "changed") for n in d.changed]
    results += [ModelResult(n, True, "disappeared") for n in d.removed]
    return CommandResult(ok=True, results=tuple(results))
