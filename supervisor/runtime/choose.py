"""`--runtime docker|process|auto`: which adapter the daemon runs models with, and what goes with it.

Docker brings its events stream and the image verifier; the process runtime brings
its pidfd watch (inside the runtime) and the binary verifier, and renders models
against the lock's `binaries` section. auto takes Docker when the engine answers a
ping, else the process runtime, and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from supervisor.core.events import Event
from supervisor.errors import ConfigError, RuntimeUnavailable

RuntimeKind = Literal["docker", "process", "auto"]
KINDS = ("docker", "process", "auto")


@dataclass
class Wiring:
    kind: str                                    # "docker" | "process"
    why: str                                     # how it was chosen, for the start-up log
    runtime: Any                                 # DockerRuntime | ProcessRuntime
    verifier: Any                                # executor.Verifier
    events: Any = None                           # DockerEventStream (docker only)
    confinement: dict[str, str] | None = None


def docker_unreachable(timeout_s: float = 3.0) -> str | None:
    """None when a Docker engine answers a ping (DOCKER_HOST or the default socket), else why not."""
    try:
        import docker

        client = docker.from_env(timeout=int(max(1, timeout_s)))
        try:
            client.ping()
        finally:
            client.close()
    except Exception as e:  # any failure to reach or speak to an engine means "no Docker" here
        return f"{type(e).__name__}: {e}"
    return None


def choose(kind: RuntimeKind, *, instance: str, lock_path: Path, post: Callable[[Event], None],
           probe: Callable[[], str | None] = docker_unreachable) -> Wiring:
    if kind not in KINDS:
        raise ConfigError(f"--runtime {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "auto":
        reason = probe()
        if reason is None:
            return _docker(instance, lock_path, post, why="auto: the Docker engine answered")
        return _process(instance, lock_path, post, why=f"auto: no Docker engine ({reason})")
    if kind == "docker":
        return _docker(instance, lock_path, post, why="--runtime docker")
    return _process(instance, lock_path, post, why="--runtime process")


def _docker(instance: str, lock_path: Path, post: Callable[[Event], None], *, why: str) -> Wiring:
    import docker

    from supervisor.artifacts.verify import LockVerifier
    from supervisor.runtime.docker.runtime import DockerRuntime
    from supervisor.runtime.docker.events import DockerEventStream

    runtime = DockerRuntime(instance=instance)
    return Wiring(
        kind="docker", why=why, runtime=runtime, verifier=LockVerifier(runtime.client, lock_path, instance=instance),
        events=DockerEventStream(lambda: docker.from_env(timeout=60), post, instance=instance),
    )


def _process(instance: str, lock_path: Path, post: Callable[[Event], None], *, why: str) -> Wiring:
    from supervisor.artifacts.binaries import BinaryVerifier
    from supervisor.artifacts.lock import read_lock
    from supervisor.runtime.process.runtime import ProcessRuntime

    if not read_lock(lock_path).binaries:
        raise RuntimeUnavailable(
            f"the process runtime needs a llama-server binary, and {lock_path} records none: run "
            f"'llama-supervisorctl build --native VARIANT' (or add --from-image where Docker has the image)"
        )
    runtime = ProcessRuntime(post=post, instance=instance, lock_path=lock_path)
    return Wiring(kind="process", why=why, runtime=runtime, verifier=BinaryVerifier(lock_path),
                  confinement=runtime.confinement)
