"""The checks of pinned artefacts before a container is created: the Verifier protocol the executor calls.

Each runtime brings its own: runtime/docker/verifier.py (LockVerifier: the model file and the image) and
runtime/process/verifier.py (BinaryVerifier: the model file and the host binary).
"""

from __future__ import annotations

from typing import Protocol

from supervisor.core.spec import DesiredModel


class Verifier(Protocol):
    """Checks pinned artefacts before a container is created; raises VerificationError subclasses."""

    def check_model(self, desired: DesiredModel) -> None: ...

    def check_image(self, desired: DesiredModel) -> None: ...

    def check_start(self, desired: DesiredModel) -> None:
        """Before a start in place: the model file and the image or binary that start will use (the
        same checks as before a create, but what a start does not look up, such as the image's tag, is
        not looked up: the container runs its image by ID)."""

    def confirm_model(self, desired: DesiredModel) -> None:
        """After the container started: the model path still names the file check_model hashed."""


class NoVerifier:
    """For tests and tools that verified elsewhere."""

    def check_model(self, desired: DesiredModel) -> None: pass

    def check_image(self, desired: DesiredModel) -> None: pass

    def check_start(self, desired: DesiredModel) -> None: pass

    def confirm_model(self, desired: DesiredModel) -> None: pass
