"""Applies the planner's actions through the Runtime, one at a time, verifying before every create.

Thin on purpose: no decisions beyond the order of runtime calls inside one action.
Returns what the container looks like afterwards so the loop's cache stays right
without another list call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, assert_never

import structlog

from supervisor.core.actions import Action, Create, Recreate, Remove, Start, Stop
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import DesiredModel
from supervisor.errors import ResourceExhausted, VerificationError, exhaustion
from supervisor.runtime import Runtime

log = structlog.get_logger("supervisor.daemon.executor")


class Verifier(Protocol):
    """Checks pinned artefacts before a container is created; raises VerificationError subclasses."""

    def check_model(self, desired: DesiredModel) -> None: ...

    def check_image(self, desired: DesiredModel) -> None: ...

    def confirm_model(self, desired: DesiredModel) -> None:
        """After the container started: the model path still names the file check_model hashed."""


class NoVerifier:
    """For tests and tools that verified elsewhere."""

    def check_model(self, desired: DesiredModel) -> None: pass

    def check_image(self, desired: DesiredModel) -> None: pass

    def confirm_model(self, desired: DesiredModel) -> None: pass


class LockVerifier:
    """The real checks: supervisor.modelsrc.ModelVerifier and supervisor.images.ImageVerifier.

    Imported lazily so the daemon's core paths do not depend on them being importable in tests.
    The image check's inspect containers carry `instance`, so an operator sees whose they are;
    they are never model containers (runtime.inspect_labels).
    """

    def __init__(self, client: object, lock_path: Path, *, instance: str | None = None) -> None:
        from supervisor import images, modelsrc
        from supervisor.lock import read_lock

        self._lock_path = lock_path
        self._read_lock = read_lock
        self._images = images.ImageVerifier(client, instance=instance)
        self._models = modelsrc.ModelVerifier()

    def check_model(self, desired: DesiredModel) -> None:
        self._models.check(Path(desired.model_path), desired.spec.model_sha256)

    def check_image(self, desired: DesiredModel) -> None:
        from supervisor.errors import ImageMismatch

        lock = self._read_lock(self._lock_path)
        record = next((r for r in lock.images.values() if r.image_id == desired.spec.image_id), None)
        if record is None:
            raise ImageMismatch(
                f"{desired.name}: image {desired.spec.image_id[:19]} is not in {self._lock_path}: "
                f"run 'llama-supervisorctl build'"
            )
        self._images.check(record)

    def confirm_model(self, desired: DesiredModel) -> None:
        self._models.confirm(Path(desired.model_path), desired.spec.model_sha256)


class Executor:
    def __init__(self, runtime: Runtime, verifier: Verifier, *, stop_timeout_s: float = 10.0) -> None:
        self.runtime = runtime
        self.verifier = verifier
        self.stop_timeout_s = stop_timeout_s

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
            case Recreate(desired=d, old_id=old):
                self._verify(d)
                log.info("recreate", model=d.name, old=old[:12], reason="config hash changed")
                self._stop(old, current, reason="recreate: config changed", kill=False)
                rt.remove(old)
                return self._create_and_start(d)
            case Start(model=m, container_id=cid):
                if current is not None and current.status == "paused":
                    rt.unpause(cid)
                log.info("start in place", model=m, container=cid[:12])
                rt.start(cid)
                return rt.inspect(cid)
            case Stop(model=m, container_id=cid, reason=why, kill=kill):
                self._stop(cid, current, reason=why, kill=kill)
                return _with_status(current, "exited")
            case Remove(container_id=cid, reason=why):
                log.info("remove", model=action.model, container=cid[:12], reason=why)
                if current is not None and current.status in ("running", "paused", "restarting"):
                    self._stop(cid, current, reason=why, kill=False)
                rt.remove(cid)
                return None
            case _:
                assert_never(action)

    def _verify(self, d: DesiredModel) -> None:
        self.verifier.check_model(d)
        self.verifier.check_image(d)

    def _create_and_start(self, d: DesiredModel) -> ObservedContainer | None:
        cid = self.runtime.create(d.spec)
        log.info("created", model=d.name, container=cid[:12], config_hash=d.spec.config_hash()[:12])
        self.runtime.start(cid)
        try:
            # Docker resolved the bind mount at start: the file must still be the one hashed.
            self.verifier.confirm_model(d)
        except VerificationError:
            log.error("model file changed under the check; removing the container", model=d.name,
                      container=cid[:12])
            self.runtime.remove(cid)
            raise
        return self.runtime.inspect(cid)

    def _stop(self, cid: str, current: ObservedContainer | None, *, reason: str, kill: bool) -> None:
        """Graceful first, force after the timeout.

        A kill goes to a paused container as it is (the engine delivers SIGKILL
        to a frozen cgroup); unpausing first would let the hung server answer
        for a moment before it dies. Only a graceful stop unpauses, so that the
        server can handle SIGTERM.
        """
        if kill:
            log.info("kill", model=current.model if current else "", container=cid[:12], reason=reason)
            self.runtime.kill(cid)
            return
        if current is not None and current.status == "paused":
            self.runtime.unpause(cid)
        log.info("stop", model=current.model if current else "", container=cid[:12], reason=reason,
                 timeout_s=self.stop_timeout_s)
        self.runtime.stop(cid, timeout_s=self.stop_timeout_s)


def _with_status(c: ObservedContainer | None, status: str) -> ObservedContainer | None:
    if c is None:
        return None
    from dataclasses import replace

    return replace(c, status=status)  # type: ignore[arg-type]
