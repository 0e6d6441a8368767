"""`--runtime docker|process|auto`: which adapter (runtime/adapter.py) the daemon runs models with.

ADAPTERS is the table: one line per runtime, naming the module whose `wire()` builds its adapter
(imported only when chosen, so the daemon loads the docker SDK only for Docker). auto takes Docker
when the engine answers a ping, else the process runtime, and says why.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from supervisor.core.events import Event
from supervisor.errors import ConfigError
from supervisor.runtime.adapter import RuntimeAdapter, Wire

RuntimeKind = Literal["docker", "process", "auto"]

ADAPTERS: dict[str, str] = {
    "docker": "supervisor.runtime.docker.wire",
    "process": "supervisor.runtime.process.wire",
}
KINDS = (*ADAPTERS, "auto")


def wire_for(kind: str) -> Wire:
    """The `wire` of a runtime in ADAPTERS."""
    wire: Wire = importlib.import_module(ADAPTERS[kind]).wire
    return wire


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
           probe: Callable[[], str | None] = docker_unreachable, standby: int = 0) -> RuntimeAdapter:
    if kind not in KINDS:
        raise ConfigError(f"--runtime {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "auto":
        reason = probe()
        chosen, why = ("docker", "auto: the Docker engine answered") if reason is None else \
            ("process", f"auto: no Docker engine ({reason})")
    else:
        chosen, why = kind, f"--runtime {kind}"
    return wire_for(chosen)(instance=instance, lock_path=lock_path, post=post, why=why, standby=standby)
