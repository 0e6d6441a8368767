"""Applies the planner's actions through the Runtime, one at a time, verifying before every create and
every start in place.

Thin on purpose: no decisions beyond the order of runtime calls inside one action.
Returns what the container looks like afterwards so the loop's cache stays right
without another list call.
"""

from __future__ import annotations

from collections.abc import Callable

from typing import assert_never

import structlog

from supervisor.core.actions import Action, Create, CreateSuccessor, Drain, Recreate, Remove, Resume, Start, Stop
from supervisor.core.observed import ObservedContainer
from supervisor.core.planner import LOADING
from supervisor.core.spec import DesiredModel
from supervisor.errors import ResourceExhausted, RuntimeOperationError, VerificationError, exhaustion
from supervisor.artifacts.verify import NoVerifier, Verifier
from supervisor.daemon.kvkeeper import KvKeeper
from supervisor.runtime import Runtime

# The Verifier protocol lives in supervisor/artifacts/verify.py, each runtime's verifier in its package
# (runtime/docker/verifier.py, runtime/process/verifier.py); named here too for old importers.
__all__ = ["Executor", "NoVerifier", "Verifier"]

log = structlog.get_logger("supervisor.daemon.executor")


class Executor:
    def __init__(self, runtime: Runtime, verifier: Verifier, *, stop_timeout_s: float = 10.0,
                 kv: KvKeeper | None = None,
                 before_stop: Callable[[str, int | None], None] = lambda model, port: None) -> None:
        self.runtime = runtime
        self.verifier = verifier
        self.stop_timeout_s = stop_timeout_s
        self.kv = kv          # KV caches kept across stops: saved before a graceful stop, prepared before a start
        # (model, its published port) before a graceful stop (and after a kill): Demand.stopping, so that the gateway's idle
        # connections do not hold llama-server's exit (gateway/proxy.py)
        self.before_stop = before_stop
        self.verified: dict[str, str] = {}     # container ID -> what was checked before it was created (status)

    def apply(self, action: Action, current: ObservedContainer | None) -> ObservedContainer | None:
        """Run one action; `current` is the cached container it acts on (if any).

        Returns the container afterwards (None when it is gone). Raises
        VerificationError (permanent), RuntimeOperationError (the model's), or a
        DaemonSideError: RuntimeUnavailable, or ResourceExhausted when the daemon ran
        out of descriptors or memory on the way (reading the lock, hashing the model).
        """
        try:
            return self._apply(action, current)
        except OSError as e:
            if (cause := exhaustion(e)) is None:
                raise
            raise ResourceExhausted(
                f"{action.model}: {type(action).__name__.lower()}: the daemon is out of resources "
                f"({cause.strerror or cause}); retried later") from e

    def _apply(self, action: Action, current: ObservedContainer | None) -> ObservedContainer | None:
        rt = self.runtime
        match action:
            case Create(desired=d):
                self._verify(d)
                return self._create_and_start(d)
            case Recreate(desired=d, old_id=old, kill_old=kill_old):
                self._verify(d)
                log.info("recreate", model=d.name, old=old[:12], reason="config hash changed")
                self._stop(old, current, reason=f"recreate: config changed; {LOADING}" if kill_old
                           else "recreate: config changed", kill=kill_old)
                rt.remove(old)
                self.verified.pop(old, None)
                return self._create_and_start(d)
            case CreateSuccessor(desired=d, old_id=old):
                self._verify(d)
                log.info("start-first: creating the new container beside the old", model=d.name, old=old[:12],
                         reason="config hash changed")
                if current is None or not current.name:
                    # without the old one's name the new one could take it (a 409, and the engine's
                    # runtime clears a name it holds): never guess
                    raise RuntimeOperationError(f"{d.name}: start-first: the old container {old[:12]} is not known")
                return self._create_and_start(d, beside=current.name)
            case Start(model=m, container_id=cid, desired=d):
                if d is not None:
                    # docker start mounts the model's path again and a process start execs the binary
                    # again: both are checked as before a create (cached by file identity and image ID)
                    self.verifier.check_start(d)
                if current is not None and current.status == "paused":
                    rt.unpause(cid)
                log.info("start in place", model=m, container=cid[:12])
                if self.kv is not None:
                    self.kv.prepare(m)
                rt.start(cid)
                if self.kv is not None:
                    self.kv.started(m, cid)
                if d is not None:
                    self._confirm(d, cid)
                return rt.inspect(cid)
            case Stop(model=m, container_id=cid, reason=why, kill=kill):
                spent = 0.0
                if not kill and self.kv is not None:
                    spent = self.kv.save(m, current, self.stop_timeout_s)    # within the stop's timeout
                self._stop(cid, current, reason=why, kill=kill, timeout_s=self.stop_timeout_s - spent)
                return _with_status(current, "exited")
            case Remove(container_id=cid, reason=why):
                log.info("remove", model=action.model, container=cid[:12], reason=why)
                if current is not None and current.status in ("running", "paused", "restarting"):
                    self._stop(cid, current, reason=why, kill=False)
                rt.remove(cid)
                self.verified.pop(cid, None)
                return None
            case Drain() | Resume():
                return current      # the loop's and the gateway's business: no runtime call
            case _:
                assert_never(action)

    def _verify(self, d: DesiredModel) -> None:
        self.verifier.check_model(d)
        self.verifier.check_image(d)

    def _create_and_start(self, d: DesiredModel, *, beside: str = "") -> ObservedContainer | None:
        if self.kv is not None:
            self.kv.prepare(d.name)     # its bind mount's source must exist before the create
        # an on-demand model's container is held: a swap to it can start its container ahead (Runtime.prepare)
        cid = self.runtime.create(d.spec, beside=beside, held=d.serving.on_demand)
        log.info("created", model=d.name, container=cid[:12], config_hash=d.spec.config_hash()[:12])
        self.runtime.start(cid)
        if self.kv is not None:
            self.kv.started(d.name, cid)
        self._confirm(d, cid)
        self.verified[cid] = _checked(d)
        return self.runtime.inspect(cid)

    def _confirm(self, d: DesiredModel, cid: str) -> None:
        try:
            # Docker resolved the bind mount at start: the file must still be the one hashed.
            self.verifier.confirm_model(d)
        except VerificationError:
            log.error("model file changed under the check; removing the container", model=d.name,
                      container=cid[:12])
            self.runtime.remove(cid)
            raise

    def _stop(self, cid: str, current: ObservedContainer | None, *, reason: str, kill: bool,
              timeout_s: float | None = None) -> None:
        """Graceful first, force after the timeout.

        A kill goes to a paused container as it is (the engine delivers SIGKILL
        to a frozen cgroup); unpausing first would let the hung server answer
        for a moment before it dies. Only a graceful stop unpauses, so that the
        server can handle SIGTERM.
        """
        if kill:
            log.info("kill", model=current.model if current else "", container=cid[:12], reason=reason)
            self.runtime.kill(cid)
            if current is not None:          # after: nothing to wait for, but its clients go (one per port)
                self.before_stop(current.model, current.host_port)
            return
        if current is not None and current.status == "paused":
            self.runtime.unpause(cid)
        timeout = self.stop_timeout_s if timeout_s is None else max(0.0, min(self.stop_timeout_s, timeout_s))
        log.info("stop", model=current.model if current else "", container=cid[:12], reason=reason,
                 timeout_s=round(timeout, 3))
        if current is not None:
            self.before_stop(current.model, current.host_port)
        self.runtime.stop(cid, timeout_s=timeout)


def _checked(d: DesiredModel) -> str:
    kind, _, digest = d.spec.image_id.partition(":")
    artefact = "binary" if kind.startswith("binary") else "image"
    return (f"model file SHA-256 {d.spec.model_sha256[:12]} and {artefact} {digest[:12]} checked before this"
            " container was created")


def _with_status(c: ObservedContainer | None, status: str) -> ObservedContainer | None:
    if c is None:
        return None
    from dataclasses import replace

    return replace(c, status=status)  # type: ignore[arg-type]
