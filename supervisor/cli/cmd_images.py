"""llama-supervisorctl build | verify | fetch-model: images and models, before anything runs.

The docker SDK and the manifest schema are imported inside the commands, so
that `llama-supervisorctl status` does not pay for them at start-up.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import click

from supervisor import paths
from supervisor.cli import output
from supervisor.cli.where import local_state
from supervisor.errors import ConfigError, ImageMismatch
from supervisor.artifacts.lock import ImageLock, ImageRecord, read_lock, write_lock


def _say(line: str) -> None:
    output.echo(line, err=True)


def _variant(name: str) -> str:
    if name != "auto":
        return name
    from supervisor.artifacts import hardware

    return hardware.best_variant(hardware.detect())


def check_signature(lock_path: Path) -> None:
    """Verify <lock>.asc with gpgv when LLAMA_SUPERVISOR_LOCK_KEYRING names a keyring."""
    keyring = os.environ.get("LLAMA_SUPERVISOR_LOCK_KEYRING")
    if not keyring:
        return
    sig = lock_path.with_name(lock_path.name + ".asc")
    if not sig.exists():
        raise ImageMismatch(f"a keyring is configured but {sig} is missing: sign the lock with 'gpg --detach-sign --armor {lock_path}'")
    try:
        proc = subprocess.run(["gpgv", "--keyring", keyring, str(sig), str(lock_path)], capture_output=True, text=True)
    except FileNotFoundError as e:
        raise ConfigError(
            "LLAMA_SUPERVISOR_LOCK_KEYRING is set but gpgv is not installed: install it (apt install gpgv)"
        ) from e
    if proc.returncode != 0:
        raise ImageMismatch(f"{sig} does not verify {lock_path} with {keyring}:\n{proc.stderr.strip()}")


@click.command()
@click.argument("variant", default="auto")
@click.option("--source", "source_spec", default=None, help="'pypi' (default, the pinned sdist), a tarball, a directory or a URL.")
@click.option("--sha256", default=None, help="SHA-256 of the source tarball (required for a URL).")
@click.option("--build-number", type=int, default=None, help="llama.cpp build number for a non-default source.")
@click.option("--lock", "lock_file", type=click.Path(path_type=Path), default=None, help="Image lock to update.")
@click.option("--quiet", is_flag=True, help="Only the result, not the build log.")
@click.option("--native", is_flag=True,
              help="A host binary for --runtime process instead of an image: compiled with the host's cmake "
                   "and compiler into the state dir, recorded in the lock's binaries.")
@click.option("--from-image", is_flag=True,
              help="With --native: take the binary out of the locked image (seconds, needs Docker).")
@click.option("--cuda-arch", default=None,
              help="cuda: CMAKE_CUDA_ARCHITECTURES, one architecture (e.g. 90; default: the detected GPU's).")
@click.option("--jobs", "-j", type=int, default=None, help="With --native: parallel compile jobs (default: all cores).")
@click.option("--cpu", "arm_arch", default=None, metavar="MARCH",
              help="arm64 only: the -march to build for (default armv8-a: NEON; armv8.2-a+dotprod adds dotprod; "
                   "armv8.6-a adds dotprod and i8mm, and needs a CPU that has them).")
@local_state()
def build(variant: str, source_spec: str | None, sha256: str | None, build_number: int | None,
          lock_file: Path | None, quiet: bool, native: bool, from_image: bool, cuda_arch: str | None,
          jobs: int | None, arm_arch: str | None) -> None:
    """Build the llama-server image VARIANT (auto: the best for this host) and record it in the lock."""
    from supervisor.artifacts import images, source

    variant = _variant(variant)
    lock_path = lock_file or paths.lock_path()
    started = time.monotonic()
    if native or from_image:
        _build_native(variant, lock_path, source_spec=source_spec, sha256=sha256, build_number=build_number,
                      quiet=quiet, from_image=from_image, cuda_arch=cuda_arch, jobs=jobs)
        return
    if variant == "cuda" and cuda_arch is None:
        from supervisor.artifacts import binaries

        cuda_arch = binaries.cuda_architectures(binaries.detect_compute_capabilities())
    client = images.client_from_env()     # before fetching a source it could not build
    src = source.resolve(source_spec, sha256=sha256, build_number=build_number, progress=_say)
    record = images.build(client, variant, src, progress=(lambda _: None) if quiet else _say, cuda_arch=cuda_arch,
                          arm_arch=arm_arch)
    lock = read_lock(lock_path).with_record(record)
    write_lock(lock_path, lock)
    output.echo(
        f"{variant}: built {record.tag} {record.image_id[:19]} in {time.monotonic() - started:.1f}s; "
        f"{record.version}; {len(record.flags)} flags; binary {record.binary_sha256[:12]}; lock {lock_path}"
    )


def _build_native(variant: str, lock_path: Path, *, source_spec: str | None, sha256: str | None,
                  build_number: int | None, quiet: bool, from_image: bool, cuda_arch: str | None,
                  jobs: int | None) -> None:
    from supervisor.artifacts import binaries, images, source

    started = time.monotonic()
    progress = (lambda _: None) if quiet else _say
    lock = read_lock(lock_path)
    if from_image:
        image = lock.get(variant)
        if image is None:
            raise ConfigError(f"no {variant} image in {lock_path}: run 'llama-supervisorctl build {variant}' first, "
                              f"or compile with 'llama-supervisorctl build --native {variant}'")
        record = binaries.from_image(images.client_from_env(), image, progress=progress)
    else:
        if variant == "cuda" and cuda_arch is None:
            cuda_arch = binaries.cuda_architectures(binaries.detect_compute_capabilities())
        src = source.resolve(source_spec, sha256=sha256, build_number=build_number, progress=_say)
        record = binaries.build_native(variant, src, progress=progress, jobs=jobs, cuda_arch=cuda_arch)
    write_lock(lock_path, read_lock(lock_path).with_binary(record))
    output.echo(
        f"{variant}: {record.path} SHA-256 {record.sha256[:12]} ({record.origin}) in "
        f"{time.monotonic() - started:.1f}s; {record.version}; {len(record.flags)} flags; lock {lock_path}"
    )


@click.command()
@click.argument("variants", nargs=-1)
@click.option("--lock", "lock_file", type=click.Path(path_type=Path), default=None)
@click.option("--rebuild", is_flag=True,
              help="Rebuild each VARIANT from nothing (no layer cache, a fresh context, its own tag) and compare "
                   "the result with the lock: exit 0 when the binary and its facts are reproduced, 3 otherwise.")
@click.option("--source", "source_spec", default=None, help="With --rebuild: the source the lock was built from.")
@click.option("--sha256", default=None, help="With --rebuild: SHA-256 of that source.")
@click.option("--quiet", is_flag=True, help="With --rebuild: only the result, not the build log.")
@local_state()
def verify(variants: tuple[str, ...], lock_file: Path | None, rebuild: bool, source_spec: str | None,
           sha256: str | None, quiet: bool) -> None:
    """Re-derive each locked image (default: all) and compare it with the lock."""
    from supervisor.artifacts import images

    lock_path = lock_file or paths.lock_path()
    check_signature(lock_path)
    lock = read_lock(lock_path)
    if rebuild:
        _verify_rebuild(lock, lock_path, [_variant(v) for v in variants], source_spec=source_spec, sha256=sha256,
                        quiet=quiet)
        return
    names = [_variant(v) for v in variants] or sorted(lock.images)
    if not names:
        raise ConfigError(f"{lock_path} records no image: run 'llama-supervisorctl build' first")
    client = images.client_from_env()
    failed = 0
    for name in names:
        try:
            diffs = images.verify(client, lock, name)
        except ImageMismatch as e:
            diffs = [str(e)]
        failed += echo_verdict(name, diffs, lock.images[name])
    if failed:
        raise ImageMismatch(f"{failed} of {len(names)} image(s) differ from {lock_path}: rebuild with 'llama-supervisorctl build VARIANT'")


def echo_verdict(name: str, diffs: list[str], record: ImageRecord) -> bool:
    """One image's line(s) of `verify` and `pull`: OK with what it is, or MISMATCH with each difference.
    True when it differs."""
    if diffs:
        output.echo(f"{name}: MISMATCH")
        for d in diffs:
            output.echo(f"  {d}")
        return True
    output.echo(f"{name}: OK {record.tag} {record.image_id[:19]} binary {record.binary_sha256[:12]}")
    return False


def _verify_rebuild(lock: ImageLock, lock_path: Path, names: list[str], *, source_spec: str | None,
                    sha256: str | None, quiet: bool) -> None:
    from supervisor.artifacts import images, rebuild, source

    if not names:
        raise ConfigError("verify --rebuild needs the VARIANT(s) to rebuild: each costs a full build")
    client = images.client_from_env()
    failed = 0
    for name in names:
        started = time.monotonic()
        record = lock.get(name)
        src = source.resolve(source_spec, sha256=sha256, build_number=record.build_number if record else None,
                             progress=_say)
        result = rebuild.rebuild(client, lock, name, src, progress=(lambda _: None) if quiet else _say)
        took = f"{time.monotonic() - started:.0f}s"
        same_image = "the same image ID too" if result.same_image else (
            f"image ID {result.record.image_id[:19]}, the lock's {lock.images[name].image_id[:19]}, "
            + ("the same layers: only the config's creation times differ" if result.same_layers
               else "other layers"))
        if result.differences:
            failed += 1
            output.echo(f"{name}: NOT REPRODUCED (rebuilt in {took})")
            for d in result.differences:
                output.echo(f"  {d}")
            for line in result.hint.splitlines():
                output.echo(f"  {line}")
        else:
            output.echo(f"{name}: REPRODUCED binary {result.record.binary_sha256} (rebuilt in {took}; {same_image})")
    if failed:
        raise ImageMismatch(f"{failed} of {len(names)} rebuild(s) differ from {lock_path}")


@click.command("fetch-model")
@click.argument("names", nargs=-1)
@click.option("--manifests", "manifests_dir", type=click.Path(path_type=Path), default=None)
@local_state()
def fetch_model(names: tuple[str, ...], manifests_dir: Path | None) -> None:
    """Fetch and verify the model files the manifests name (default: all)."""
    from supervisor.artifacts import modelsrc
    from supervisor.manifest.loader import load_dir

    manifests = load_dir(manifests_dir or paths.manifests_dir())
    wanted = list(names) or sorted(manifests.models)
    unknown = [n for n in wanted if n not in manifests.models]
    if unknown:
        raise ConfigError(f"no model named {', '.join(unknown)} in the manifests; known: {', '.join(sorted(manifests.models))}")
    for name in wanted:
        path = modelsrc.fetch(manifests.models[name].source, progress=lambda line, n=name: _say(f"{n}: {line}"))
        output.echo(f"{name}: {path} OK")


def register(cli: click.Group) -> None:
    cli.add_command(build)
    cli.add_command(verify)
    cli.add_command(fetch_model)
