"""The Docker runtime's adapter: DockerRuntime, the image verifier and the engine's event stream."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from supervisor.core.events import Event
from supervisor.runtime.adapter import RuntimeAdapter


def wire(*, instance: str, lock_path: Path, post: Callable[[Event], None], why: str,
         standby: int = 0) -> RuntimeAdapter:
    import docker

    from supervisor.runtime.docker.events import DockerEventStream
    from supervisor import paths
    from supervisor.runtime.docker.runtime import DockerRuntime
    from supervisor.runtime.docker.standby import Gates
    from supervisor.runtime.docker.verifier import LockVerifier

    runtime = DockerRuntime(instance=instance, gates=Gates(paths.state_dir() / "standby"), standby=standby)
    return RuntimeAdapter(
        kind="docker", why=why, runtime=runtime, verifier=LockVerifier(runtime.client, lock_path, instance=instance),
        lock_view="images",
        events=DockerEventStream(lambda: docker.from_env(timeout=60), post, instance=instance),
    )
