"""`validate`, `hardware` and `schema`: the manifest commands of llama-supervisorctl."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from supervisor import paths
from supervisor.cli import output
from supervisor.cli.where import FOUND_KEY, Found, local_state
from supervisor.errors import ManifestError

if TYPE_CHECKING:      # the manifest schema loads pydantic: only the commands that read manifests import it
    from supervisor.manifest.loader import ManifestSet


class _Invalid(click.ClickException):
    """The summary line after the problems; exits 2 like every ConfigError."""

    exit_code = ManifestError.exit_code


def register(cli: click.Group) -> None:
    cli.add_command(validate)
    cli.add_command(hardware_cmd)
    cli.add_command(schema)


@click.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@local_state()
def validate(directory: Path | None) -> None:
    from supervisor.artifacts import hardware
    from supervisor.artifacts.lock import read_lock
    from supervisor.manifest import load_dir
    from supervisor.render import desired as render
    from supervisor.render.facts import host_files

    """Check every manifest in DIRECTORY (default: the manifest directory); exit 2 on any problem.

    When an image lock exists, the rendered llama-server arguments are checked
    against the flags of the images it records too.
    """
    directory = directory or paths.manifests_dir()
    try:
        manifests = load_dir(directory)
    except ManifestError as e:
        for problem in e.problems:
            output.echo(problem)
        raise _Invalid(f"{len(e.problems)} problem(s) in {directory}") from None
    lock_file = paths.lock_path()
    files = host_files(manifests)
    for warning in chat_template_warnings(manifests, files.models):
        output.echo(warning)
    problems: list[str] = list(files.problems)
    if lock_file.exists():
        from supervisor.artifacts import gguf

        budget = gguf.Budget()
        facts = {name: gguf.facts(path, budget) for name, path in files.models.items()}
        desired, found = render.render_all(
            manifests, read_lock(lock_file), hardware.detect(), file_sizes=files.sizes, facts=facts,
            model_paths=files.models, key_paths=files.keys,
        )
        problems += found
        problems += gpu_problems(manifests, sorted(n for n, d in desired.items() if d.spec.gpu is not None))
        for name, d in sorted(desired.items()):
            if d.kv.note != "kept" and (d.kv.keep or manifests.models[name].kv_cache.keep is not None
                                        or d.serving.on_demand):
                output.echo(f"note: model '{name}': KV cache across stops {d.kv.note}")
    else:
        output.echo(f"note: no image lock at {lock_file}; llama-server flags not checked", err=True)
    for problem in problems:
        output.echo(problem)
    if problems:
        raise _Invalid(f"{len(problems)} problem(s) in {directory}")
    output.echo(f"{len(manifests.models)} models, {len(manifests.profiles)} profiles: OK")


def gpu_problems(manifests: ManifestSet, names: list[str], client: object | None = None) -> list[str]:
    """A problem for each model in `names` (those rendered with a GPU) when the Docker engine has no NVIDIA
    container runtime; a note, not a problem, when the engine cannot be asked."""
    if not names:
        return []
    from supervisor.artifacts import gpu_runtime, images
    from supervisor.errors import GpuUnavailable, RetryableError
    from supervisor.manifest.loader import Origin

    try:
        client = client or images.client_from_env()
        gpu_runtime.check(client, names[0])
    except RetryableError as e:
        output.echo(f"note: GPU support of the Docker engine not checked: {e}", err=True)
        return []
    except GpuUnavailable as e:
        why = str(e).split(": ", 1)[1]
        return [f"{manifests.model_origins.get(n, Origin('<unknown>', 1)).at('profile')}: model '{n}': {why}"
                for n in names]
    return []


_TEMPLATE_FLAGS = ("--chat-template", "--chat-template-file")


def chat_template_warnings(manifests: ManifestSet, model_paths: dict[str, str]) -> list[str]:
    """A warning for each model whose GGUF has no chat template and whose extra_args give none.

    Not an error: such a model serves /v1/completions well, but llama-server formats
    /v1/chat/completions as ChatML for it, which a base model (the demo's) answers with
    the template's own tokens ('Say hi<|im_end|>...').
    """
    from supervisor.artifacts import gguf
    from supervisor.manifest.loader import Origin

    warnings = []
    for name, manifest in sorted(manifests.models.items()):
        if any(a.split("=", 1)[0] in _TEMPLATE_FLAGS for a in manifest.server.extra_args):
            continue
        facts = gguf.facts(model_paths[name], whole=True) if model_paths.get(name) else None
        if facts is None or facts.has_chat_template:
            continue
        origin = manifests.model_origins.get(name, Origin("<unknown>", 1))
        warnings.append(
            f"{origin.at('server.extra_args')}: warning: model '{name}': this model has no chat template: "
            "/v1/chat/completions will use ChatML; use /v1/completions, "
            "or add --chat-template NAME in extra_args")
    return warnings


@click.command("hardware")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@local_state(announce=False)
def hardware_cmd(as_json: bool) -> None:
    from supervisor.artifacts import hardware
    from supervisor.render import desired as render

    """Show the cores, memory, CPU flags and GPUs found, and what `profile: auto` picks."""
    host = hardware.detect()
    placement = render.place(None, host)
    threads = hardware.default_threads(host)
    flags = ["--threads", str(threads)]
    if placement.gpu_layers is not None:
        flags += ["--n-gpu-layers", str(placement.gpu_layers)]
    notable = [f for f in hardware.NOTABLE_FLAGS if f in host.cpu_flags]
    from supervisor.artifacts.lock import read_lock
    from supervisor.runtime.choose import docker_unreachable

    no_docker = docker_unreachable()
    runtime_auto = "docker" if no_docker is None else "process"
    binaries = {v: b.path for v, b in sorted(read_lock(paths.lock_path()).binaries.items())}
    found: Found = click.get_current_context().meta[FOUND_KEY]
    if as_json:
        body = {
            "cores": host.cores,
            "memory_bytes": host.memory_bytes,
            "arch": host.arch,
            "cpu_flags": notable,
            "gpus": [asdict(g) for g in host.gpus],
            "variant": placement.variant,
            "image": render.image_tag(placement.variant),
            "runnable_variants": sorted(hardware.runnable_variants(host)),
            "emulates": sorted(host.emulates),
            **({"arm64_levels": hardware.arm64_levels(host)} if host.arch == "aarch64" else {}),
            "default_flags": flags,
            "runtime_auto": runtime_auto,
            "docker": no_docker or "answers",
            "native_binaries": binaries,
            "state_dir": str(found.locations.state_dir),
            "lock": str(found.locations.lock),
            "state_from": found.why["state_dir"],
        }
        output.echo(json.dumps(body, indent=2))
        return
    output.echo(f"cores:     {host.cores}")
    output.echo(f"memory:    {host.memory_bytes / 1024**3:.1f} GiB")
    output.echo(f"arch:      {host.arch}")
    output.echo(f"cpu flags: {' '.join(notable) or '(none notable)'}")
    if host.gpus:
        for g in host.gpus:
            output.echo(f"gpu {g.index}:     {g.name}, {g.vram_bytes / 1024**3:.1f} GiB")
    else:
        output.echo("gpus:      none (NVIDIA GPUs are detected with nvidia-ml-py when it is installed)")
    output.echo(f"variant:   {placement.variant} ({render.image_tag(placement.variant)})")
    output.echo(f"runnable:  {' '.join(sorted(hardware.runnable_variants(host)))}"
                + (f" (emulates {' '.join(sorted(host.emulates))} through qemu-user)" if host.emulates else ""))
    if host.arch == "aarch64":
        levels = hardware.arm64_levels(host)
        output.echo("arm64:     " + " ".join(f"{k}={'yes' if v else 'no'}" for k, v in levels.items())
                    + " (the arm64 image needs NEON only; build --cpu armv8.6-a uses dotprod and i8mm)")
    output.echo(f"defaults:  {' '.join(flags)}")
    output.echo(f"runtime:   --runtime auto picks {runtime_auto}"
               + (" (the Docker engine answers)" if no_docker is None else f" (no Docker engine: {no_docker})"))
    output.echo("binaries:  " + (" ".join(f"{v}={p}" for v, p in binaries.items())
                                or "none (llama-supervisorctl build --native VARIANT)"))
    output.echo(f"state:     {found.note()}")


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the schema here (e.g. docs/manifest.schema.json) instead of printing it.")
def schema(out: Path | None) -> None:
    from supervisor.manifest.jsonschema import schema_text, write_schema

    """Print or write the manifest JSON Schema (for yaml-language-server)."""
    if out is None:
        output.echo(schema_text(), nl=False)
        return
    output.echo(f"wrote {write_schema(out)}")
