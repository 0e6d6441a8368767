"""The process runtime's Verifier (supervisor.artifacts.verify): a model's file, then the host binary its spec names."""

from __future__ import annotations

from pathlib import Path

from supervisor.artifacts.binaries import binary_for, verify_file
from supervisor.artifacts.hashing import HashCache
from supervisor.errors import ImageMismatch


class BinaryVerifier:
    """The Verifier for the process runtime: the model file, then the binary the spec names.

    `hashes` is shared with the runtime's launcher (wire.py): the binary is read once per file identity,
    whether the verifier or the launch (through the descriptor it executes) asks first.
    """

    def __init__(self, lock_path: Path, hashes: HashCache | None = None) -> None:
        from supervisor.artifacts import modelsrc
        from supervisor.artifacts.lock import LockReader

        self._lock_path = lock_path
        self._lock = LockReader(lock_path)
        self._hashes = hashes if hashes is not None else HashCache()
        self._models = modelsrc.ModelVerifier()

    def check_model(self, desired: object) -> None:
        from supervisor.core.spec import DesiredModel

        assert isinstance(desired, DesiredModel)
        self._models.check(Path(desired.model_path), desired.spec.model_sha256)

    def check_image(self, desired: object) -> None:
        from supervisor.core.spec import DesiredModel

        assert isinstance(desired, DesiredModel)
        record = binary_for(self._lock.read(), desired.spec.image_id)
        if record is None:
            raise ImageMismatch(
                f"{desired.name}: binary {desired.spec.image_id[:27]} is not in {self._lock_path}: run "
                f"'llama-supervisorctl build --native VARIANT' (add --from-image to take it out of the image)"
            )
        verify_file(record, self._hashes)

    def check_start(self, desired: object) -> None:
        """A start in place launches the binary again: the model file and the binary, as before a create."""
        self.check_model(desired)
        self.check_image(desired)

    def confirm_model(self, desired: object) -> None:
        """After the launch: the model file is still the one hashed (as for containers)."""
        from supervisor.core.spec import DesiredModel

        assert isinstance(desired, DesiredModel)
        self._models.confirm(Path(desired.model_path), desired.spec.model_sha256)
