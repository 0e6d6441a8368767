"""llama-supervisorctl push | pull: the locked images in a registry, by digest."""

from __future__ import annotations

import time
from pathlib import Path

import click

from supervisor import paths
from supervisor.cli import output
from supervisor.cli.cmd_images import check_signature, echo_verdict
from supervisor.cli.where import local_state
from supervisor.errors import ConfigError, ImageMismatch
from supervisor.artifacts.lock import read_lock, write_lock


def _say(line: str) -> None:
    output.echo(line, err=True)


@click.command()
@click.argument("variants", nargs=-1)
@click.option("--registry", required=True, metavar="HOST:PORT", help="The registry to push to.")
@click.option("--list", "list_tag", default=None, metavar="TAG",
              help="Also put a multi-architecture manifest list TAG over the variants pushed "
                   "(one per architecture, e.g. cpu-generic and arm64).")
@click.option("--lock", "lock_file", type=click.Path(path_type=Path), default=None, help="The image lock.")
@click.option("--quiet", is_flag=True, help="Only the result, not the push log.")
@local_state()
def push(variants: tuple[str, ...], registry: str, list_tag: str | None, lock_file: Path | None,
         quiet: bool) -> None:
    """Push the locked images VARIANTS (default: all), verified first; record each digest in the lock."""
    from supervisor.artifacts import images
    from supervisor.artifacts import push as push_mod

    lock_path = lock_file or paths.lock_path()
    check_signature(lock_path)              # what is published is what a signed lock says
    lock = read_lock(lock_path)
    names = list(variants) or sorted(lock.images)
    if not names:
        raise ConfigError(f"{lock_path} records no image: run 'llama-supervisorctl build' first")
    client = images.client_from_env()
    progress = (lambda _: None) if quiet else _say
    for name in names:
        started = time.monotonic()
        record = push_mod.push(client, lock, name, registry, progress=progress)
        lock = lock.with_record(record)
        write_lock(lock_path, lock)           # each digest as soon as the registry holds it
        pushed = record.pushed_to(registry)
        assert pushed is not None
        output.echo(f"{name}: pushed {pushed.ref} in {time.monotonic() - started:.1f}s")
    if list_tag:
        entry = push_mod.push_list(client, lock, names, registry, list_tag)
        write_lock(lock_path, lock.with_manifest_list(entry))
        output.echo(f"manifest list {entry.repository}:{entry.tag} {entry.digest} ({', '.join(entry.variants)})")


@click.command()
@click.argument("variants", nargs=-1)
@click.option("--registry", required=True, metavar="HOST:PORT", help="The registry the lock records pushes to.")
@click.option("--lock", "lock_file", type=click.Path(path_type=Path), default=None, help="The image lock.")
@click.option("--quiet", is_flag=True, help="Only the result, not the pull log.")
@local_state()
def pull(variants: tuple[str, ...], registry: str, lock_file: Path | None, quiet: bool) -> None:
    """Pull the locked images VARIANTS (default: every one pushed there) by digest, tag them as the lock
    names them and verify them: how a host that did not build them gets the very same images."""
    from supervisor.artifacts import images
    from supervisor.artifacts import push as push_mod

    lock_path = lock_file or paths.lock_path()
    check_signature(lock_path)              # the lock's digests are what this host trusts
    lock = read_lock(lock_path)
    names = list(variants) or sorted(v for v, r in lock.images.items() if r.pushed_to(registry))
    if not names:
        raise ConfigError(f"{lock_path} records no image pushed to {registry}")
    client = images.client_from_env()
    failed = 0
    for name in names:
        diffs = push_mod.pull(client, lock, name, registry, progress=(lambda _: None) if quiet else _say)
        failed += echo_verdict(name, diffs, lock.images[name])
    if failed:
        raise ImageMismatch(f"{failed} of {len(names)} pulled image(s) differ from {lock_path}")


def register(cli: click.Group) -> None:
    cli.add_command(push)
    cli.add_command(pull)
