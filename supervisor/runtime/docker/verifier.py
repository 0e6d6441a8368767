"""The Docker runtime's Verifier (supervisor.artifacts.verify): a model's file and its image, against the lock."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.core.spec import DesiredModel

if TYPE_CHECKING:
    from supervisor.artifacts.lock import ImageRecord


class LockVerifier:
    """The real checks: supervisor.artifacts.modelsrc.ModelVerifier and supervisor.artifacts.images.ImageVerifier.

    Imported lazily so the daemon's core paths do not depend on them being importable in tests.
    The image check's inspect containers carry `instance`, so an operator sees whose they are;
    they are never model containers (runtime.inspect_labels).
    """

    def __init__(self, client: object, lock_path: Path, *, instance: str | None = None) -> None:
        from supervisor.artifacts import images, modelsrc
        from supervisor.artifacts.lock import LockReader

        self._client = client
        self._lock_path = lock_path
        self._lock = LockReader(lock_path)          # parsed again only when the file changed
        self._images = images.ImageVerifier(client, instance=instance)
        self._models = modelsrc.ModelVerifier()

    def check_model(self, desired: DesiredModel) -> None:
        self._models.check(Path(desired.model_path), desired.spec.model_sha256)

    def check_image(self, desired: DesiredModel) -> None:
        from supervisor.artifacts import gpu_runtime

        if desired.spec.gpu is not None:           # before the create: the engine would fail the start
            gpu_runtime.check(self._client, desired.name)
        self._images.check(self._record(desired))

    def check_start(self, desired: DesiredModel) -> None:
        """A start in place: the model file (docker start mounts the path again) and the image the
        container runs by ID, which must be the locked one and whose binary hashed as the lock says (kept
        per image ID: an image's layers never change under its ID). The tag is not looked up: a start does
        not use it."""
        self.check_model(desired)
        self._images.check_binary(self._record(desired))

    def confirm_model(self, desired: DesiredModel) -> None:
        self._models.confirm(Path(desired.model_path), desired.spec.model_sha256)

    def _record(self, desired: DesiredModel) -> ImageRecord:
        from supervisor.errors import ImageMismatch

        lock = self._lock.read()
        record = next((r for r in lock.images.values() if r.image_id == desired.spec.image_id), None)
        if record is None:
            raise ImageMismatch(
                f"{desired.name}: image {desired.spec.image_id[:19]} is not in {self._lock_path}: "
                f"run 'llama-supervisorctl build'"
            )
        return record
