"""The process runtime's adapter: ProcessRuntime (its pidfd watch inside), the binary verifier, and
render against the lock's `binaries` section."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from supervisor.core.events import Event
from supervisor.errors import RuntimeUnavailable
from supervisor.runtime.adapter import RuntimeAdapter


def wire(*, instance: str, lock_path: Path, post: Callable[[Event], None], why: str,
         standby: int = 0) -> RuntimeAdapter:
    """`standby` is the Docker runtime's (a process launch has no engine start to do ahead): ignored."""
    from supervisor.artifacts.lock import read_lock
    from supervisor.runtime.process.runtime import ProcessRuntime
    from supervisor.runtime.process.verifier import BinaryVerifier

    if not read_lock(lock_path).binaries:
        raise RuntimeUnavailable(
            f"the process runtime needs a llama-server binary, and {lock_path} records none: run "
            f"'llama-supervisorctl build --native VARIANT' (or add --from-image where Docker has the image)"
        )
    runtime = ProcessRuntime(post=post, instance=instance, lock_path=lock_path)
    return RuntimeAdapter(kind="process", why=why, runtime=runtime,
                          verifier=BinaryVerifier(lock_path, runtime.hashes),
                          lock_view="binaries", confinement=runtime.confinement)
