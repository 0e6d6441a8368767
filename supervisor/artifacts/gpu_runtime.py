"""Whether a Docker engine can give containers NVIDIA GPUs, and the fix when it cannot.

A GPU profile becomes a device request for the `nvidia` driver. The engine
serves that request only with the NVIDIA container toolkit: its runtime in
`docker info`'s Runtimes (`nvidia-ctk runtime configure --runtime=docker`), or
its hook, `nvidia-container-runtime-hook`, on dockerd's PATH (which is how the
engine's built-in `--gpus` support finds it; seen here only when the engine is
on this host). Without either, Docker would fail the container start with
'could not select device driver "nvidia"', retried forever; the daemon refuses
such a model before the create instead (GpuUnavailable, permanent, with the
fix), and `validate` reports it.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from supervisor.errors import GpuUnavailable
from supervisor.artifacts.engine import engine_errors

HOOK = "nvidia-container-runtime-hook"
FIX = ("install the NVIDIA Container Toolkit on the Docker host, run "
       "'nvidia-ctk runtime configure --runtime=docker' and restart dockerd; or give the model a profile "
       "without gpu")


def missing(info: Mapping[str, Any], *, hook_on_path: bool) -> str:
    """Why this engine cannot serve an NVIDIA device request ('' when it can), from `docker info` (pure)."""
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    if "nvidia" in runtimes or hook_on_path:
        return ""
    return (f"this Docker engine has no NVIDIA container runtime ('docker info' lists runtimes: "
            f"{', '.join(runtimes) or 'none'}; no {HOOK} on PATH): {FIX}")


def engine_info(client: Any) -> Mapping[str, Any]:
    with engine_errors("info", "(runtimes)"):
        return dict(client.info())


def check(client: Any, model: str, *, hook_on_path: bool | None = None) -> None:
    """GpuUnavailable when `model` asks for GPUs this engine cannot give."""
    hook = shutil.which(HOOK) is not None if hook_on_path is None else hook_on_path
    why = missing(engine_info(client), hook_on_path=hook)
    if why:
        raise GpuUnavailable(f"{model}: its profile asks for NVIDIA GPUs, but {why}")
