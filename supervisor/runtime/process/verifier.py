"""The process runtime's Verifier (supervisor.artifacts.verify): a model's file, then the host binary its spec names."""

from __future__ import annotations

from pathlib import Path

from supervisor.artifacts.binaries import binary_for, verify_file
from supervisor.errors import ImageMismatch


class BinaryVerifier:
    """The Verifier for the process runtime: the model file, then the binary the spec names."""

    def __init__(self, lock_path: Path) -> None:
        from supervisor.artifacts import modelsrc

        self._lock_path = lock_path
        self._models = modelsrc.ModelVerifier()

    def check_model(self, desired: object) -> None:
        from supervisor.core.spec import DesiredModel

        assert isinstance(desired, DesiredModel)
        self._models.check(Path(desired.model_path), desired.spec.model_sha256)

    def check_image(self, desired: object) -> None:
        from supervisor.core.spec import DesiredModel
        from supervisor.artifacts.lock import read_lock

        assert isinstance(desired, DesiredModel)
        record = binary_for(read_lock(self._lock_path), desired.spec.image_id)
        if record is None:
            raise ImageMismatch(
                f"{desired.name}: binary {desired.spec.image_id[:27]} is not in {self._lock_path}: run "
                f"'llama-supervisorctl build --native VARIANT' (add --from-image to take it out of the image)"
            )
        verify_file(record)

    def confirm_model(self, desired: object) -> None:
        """After the launch: the model file is still the one hashed (as for containers)."""
        from supervisor.core.spec import DesiredModel

        assert isinstance(desired, DesiredModel)
        self._models.confirm(Path(desired.model_path), desired.spec.model_sha256)
