"""The checks of pinned artefacts before a container is created: the Verifier protocol the executor calls,
and LockVerifier, which checks a model's file (modelsrc.ModelVerifier) and its image (images.ImageVerifier)
against the lock. Here, with what they verify, so that the runtime's wiring (runtime/choose.py) builds one
without importing the daemon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from supervisor.core.spec import DesiredModel


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
    """The real checks: supervisor.artifacts.modelsrc.ModelVerifier and supervisor.artifacts.images.ImageVerifier.

    Imported lazily so the daemon's core paths do not depend on them being importable in tests.
    The image check's inspect containers carry `instance`, so an operator sees whose they are;
    they are never model containers (runtime.inspect_labels).
    """

    def __init__(self, client: object, lock_path: Path, *, instance: str | None = None) -> None:
        from supervisor.artifacts import images, modelsrc
        from supervisor.artifacts.lock import read_lock

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
