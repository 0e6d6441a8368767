"""Render the manifests for other engines: a Compose file, a Swarm stack, Kubernetes objects.

Pure: `collect` takes the loaded manifests, the image lock and a HostInfo and
gives one `ExportModel` per model (the same DesiredModel the daemon launches),
and each target module turns those into YAML text. Same input, same bytes;
every object carries the model's config hash, so a diff shows what changed.
The only I/O is in the CLI (supervisor/cli/cmd_export.py) and swarm_deploy.
"""

from __future__ import annotations

from supervisor.export.common import ExportModel, Options, collect, pushed_refs

TARGETS = ("compose", "swarm", "kubernetes")
# The targets that pin the lock's pushed digests by default (compose runs on the host that built the image).
PINNED_TARGETS = ("swarm", "kubernetes")
FILENAMES = {"compose": "compose.yaml", "swarm": "stack.yaml", "kubernetes": "kubernetes.yaml"}


def render_target(target: str, models: list[ExportModel], options: Options) -> str:
    """The file for one target, as text."""
    from supervisor.export import compose, kubernetes, swarm

    if target == "compose":
        return compose.render(models, options)
    if target == "swarm":
        return swarm.render(models, options)
    if target == "kubernetes":
        return kubernetes.render(models, options)
    raise ValueError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")


__all__ = ["FILENAMES", "PINNED_TARGETS", "TARGETS", "ExportModel", "Options", "collect", "pushed_refs",
           "render_target"]
