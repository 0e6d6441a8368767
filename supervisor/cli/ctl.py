"""llama-supervisorctl: the operator's command.

Each group of subcommands lives in its own module and registers itself here.
Errors become exit codes through SupervisorError.exit_code (supervisorctl's
3 = not running, 4 = unreachable / unknown name).
"""

from __future__ import annotations

import sys

import click

from supervisor import __version__
from supervisor.errors import SupervisorError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llama-supervisorctl")
def cli() -> None:
    """Control llama-supervisor: images, manifests and the running daemon."""


def _register() -> None:
    from supervisor.cli import cmd_images

    cmd_images.register(cli)
    for name in ("cmd_manifests", "cmd_control", "cmd_export"):
        try:
            module = __import__(f"supervisor.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != f"supervisor.cli.{name}":
                raise
            continue
        module.register(cli)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        # standalone_mode=False hands ctx.exit(n) back as a return value.
        rc = cli.main(args=argv, prog_name="llama-supervisorctl", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except SupervisorError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)
