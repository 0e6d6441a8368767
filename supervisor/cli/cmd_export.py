"""`render compose|swarm|kubernetes` and `deploy swarm|status|remove`: the manifests on other engines."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from supervisor import paths
from supervisor.cli import output
from supervisor.cli.where import local_state
from supervisor.errors import ConfigError, ManifestError

if TYPE_CHECKING:
    from supervisor.export.swarm_deploy import ServiceState

EXIT_NOT_RUNNING = 3
_IMAGE_REF = re.compile(r"^([a-z0-9-]+)=(\S+@sha256:[0-9a-f]{64})$")


class _Invalid(click.ClickException):
    exit_code = ManifestError.exit_code


def register(cli: click.Group) -> None:
    cli.add_command(render_cmd)
    cli.add_command(deploy)


F = TypeVar("F", bound=Callable[..., Any])


def _manifests_option(f: F) -> F:
    return click.option("--manifests", "manifests_dir", type=click.Path(path_type=Path), default=None,
                        help="The manifest directory (default: the daemon's).")(f)


def _render(target: str, manifests_dir: Path | None, image_refs: dict[str, str], namespace: str | None,
            swarm_nodes: int = 1, registry: str | None = None) -> str:
    from supervisor import export
    from supervisor.artifacts import hardware
    from supervisor.artifacts.lock import read_lock
    from supervisor.manifest import load_dir
    from supervisor.render.facts import stat_sizes

    directory = manifests_dir or paths.manifests_dir()
    try:
        manifests = load_dir(directory)
    except ManifestError as e:
        for problem in e.problems:
            output.echo(problem, err=True)
        raise _Invalid(f"{len(e.problems)} problem(s) in {directory}") from None
    lock_file = paths.lock_path()
    if not lock_file.exists():
        raise ConfigError(f"no image lock at {lock_file}: run 'llama-supervisorctl build auto' first "
                          "(a render pins the images the lock records)")
    host = hardware.detect()
    lock = read_lock(lock_file)
    models, problems = export.collect(manifests, lock, host, file_sizes=stat_sizes(manifests))
    for problem in problems:
        output.echo(problem, err=True)
    if problems:
        raise _Invalid(f"{len(problems)} problem(s) in {directory}: nothing rendered")
    if target in export.PINNED_TARGETS or registry is not None:
        # The digests `push` recorded; an --image-ref given for a variant wins.
        image_refs = {**export.pushed_refs(lock, {m.variant for m in models}, registry), **image_refs}
    options = export.Options(image_refs=image_refs, namespace=namespace, node_memory_bytes=host.memory_bytes,
                             swarm_nodes=swarm_nodes)
    return export.render_target(target, models, options)


def _parse_refs(values: tuple[str, ...]) -> dict[str, str]:
    refs: dict[str, str] = {}
    for value in values:
        m = _IMAGE_REF.match(value)
        if m is None:
            raise click.BadParameter(
                f"{value!r}: use VARIANT=REPOSITORY@sha256:<64 hex digits> (the digest 'docker push' printed)",
                param_hint="--image-ref",
            )
        refs[m.group(1)] = m.group(2)
    return refs


@click.command("render")
@click.argument("target", type=click.Choice(["compose", "swarm", "kubernetes"]))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write DIR/compose.yaml, DIR/stack.yaml or DIR/kubernetes.yaml instead of printing.")
@_manifests_option
@click.option("--namespace", default=None, help="kubernetes: the namespace of every object.")
@click.option("--image-ref", "image_refs", multiple=True, metavar="VARIANT=REF@sha256:DIGEST",
              help="Use this pushed, digest-pinned image for a variant (repeatable).")
@click.option("--swarm-nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="swarm: nodes in the swarm; updates start the new task first only with two or more.")
@click.option("--registry", default=None, metavar="HOST:PORT",
              help="Pin the digests the lock records for this registry ('push'); swarm and kubernetes pin "
                   "the only registry recorded without it.")
@local_state()
def render_cmd(target: str, out: Path | None, manifests_dir: Path | None, namespace: str | None,
               image_refs: tuple[str, ...], swarm_nodes: int, registry: str | None) -> None:
    """Render the manifests for Compose, Swarm or Kubernetes (same input, same bytes)."""
    from supervisor import export

    if namespace is not None and target != "kubernetes":
        raise click.BadParameter("only the kubernetes target has namespaces", param_hint="--namespace")
    text = _render(target, manifests_dir, _parse_refs(image_refs), namespace, swarm_nodes, registry)
    if out is None:
        output.echo(text, nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / export.FILENAMES[target]
    path.write_text(text)
    output.echo(f"wrote {path}")


@click.group()
def deploy() -> None:
    """Run the manifests on Docker Swarm (the local engine must be a swarm manager)."""


@deploy.command("swarm")
@_manifests_option
@click.option("--stack", default="llama", show_default=True, help="The stack name.")
@click.option("--wait", "wait_s", type=float, default=0, help="Wait up to this many seconds for every task to run.")
@click.option("--registry", default=None, metavar="HOST:PORT",
              help="Pin the digests pushed to this registry (default: the only one the lock records); "
                   "the swarm then resolves the images there instead of needing them on every node.")
@local_state()
def deploy_swarm(manifests_dir: Path | None, stack: str, wait_s: float, registry: str | None) -> None:
    """Render the stack and `docker stack deploy` it; only changed services are updated."""
    from supervisor.export import swarm_deploy
    from supervisor.artifacts.images import client_from_env

    client = client_from_env()
    swarm_deploy.require_swarm(client)
    text = _render("swarm", manifests_dir, {}, None, swarm_nodes=swarm_deploy.node_count(client),
                   registry=registry)
    stack_file = paths.state_dir() / "swarm" / f"{stack}.yaml"
    stack_file.parent.mkdir(parents=True, exist_ok=True)
    stack_file.write_text(text)
    said = swarm_deploy.deploy(stack_file, stack, resolve=swarm_deploy.resolve_mode(text))
    if said:
        output.echo(said)
    output.echo(f"deployed {stack_file} as stack {stack}")
    if wait_s > 0:
        deadline = time.monotonic() + wait_s
        while True:
            states = swarm_deploy.status(client, stack)
            if states and all(s.converged for s in states):
                break
            if time.monotonic() >= deadline:
                _print_states(states)
                raise click.ClickException(f"stack {stack} did not converge within {wait_s:g} s")
            time.sleep(1)
        _print_states(states)


@deploy.command("status")
@click.option("--stack", default="llama", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def deploy_status(ctx: click.Context, stack: str, as_json: bool) -> None:
    """Each model's service and task state; exit 3 when one is not running."""
    from supervisor.export import swarm_deploy
    from supervisor.artifacts.images import client_from_env

    client = client_from_env()
    swarm_deploy.require_swarm(client)
    states = swarm_deploy.status(client, stack)
    if as_json:
        output.echo(json.dumps([{**asdict(s), "converged": s.converged} for s in states], indent=2))
    else:
        _print_states(states)
        if not states:
            output.echo(f"stack {stack}: no services")
    if not states or not all(s.converged for s in states):
        ctx.exit(EXIT_NOT_RUNNING)


@deploy.command("remove")
@click.option("--stack", default="llama", show_default=True)
def deploy_remove(stack: str) -> None:
    """`docker stack rm` the stack."""
    from supervisor.export import swarm_deploy

    output.echo(swarm_deploy.remove(stack) or f"removed stack {stack}")


def _print_states(states: list[ServiceState]) -> None:
    width = max((len(s.model) for s in states), default=0)
    for s in states:
        word = "RUNNING" if s.converged else "STARTING" if any(
            t in ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting") for t in s.task_states
        ) else "DOWN"
        detail = f"{s.service} {s.running}/{s.desired} tasks running, hash {s.config_hash[:12]}"
        if s.update and s.update != "completed":
            detail += f", update {s.update}"
        if s.error and not s.converged:
            detail += f", last error: {s.error}"
        output.echo(f"{s.model:<{width}}  {word:<8}  {detail}")
