"""llama-supervisorctl: the operator's command.

Each group of subcommands lives in its own module and registers itself here.
Errors become exit codes through SupervisorError.exit_code (supervisorctl's
3 = not running, 4 = unreachable / unknown name).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from supervisor import __version__
from supervisor.cli import output
from supervisor.errors import SupervisorError

# Which module defines each subcommand: only the one invoked is imported, so `status` does not
# pay for docker, pydantic or httpx (docs/BENCHMARKS.md: the whole command within 150 ms).
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "cmd_images": ("build", "verify", "fetch-model"),
    "cmd_manifests": ("validate", "hardware", "schema"),
    "cmd_control": ("status", "models", "start", "stop", "restart", "unload", "reread", "update", "reload", "shutdown",
                    "pid", "tail", "console"),
    "cmd_bench": ("bench",),
    "cmd_export": ("render", "deploy"),
    "cmd_registry": ("push", "pull"),
}
_MODULE_OF = {command: module for module, commands in COMMAND_MODULES.items() for command in commands}


def _load(module: str, group: click.Group) -> None:
    """Import one subcommand module and let it add its commands to `group`."""
    importlib.import_module(f"supervisor.cli.{module}").register(group)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_MODULE_OF})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _MODULE_OF:
            _load(_MODULE_OF[cmd_name], self)
        return self.commands.get(cmd_name)


def _remember_socket(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.meta["llama_supervisor.socket"] = value   # cli.where.SOCKET_KEY: read by cmd_control and where


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llama-supervisorctl")
@click.option("--socket", type=click.Path(dir_okay=False, path_type=Path), expose_value=False,
              callback=_remember_socket,
              help="The daemon's control socket (default: $LLAMA_SUPERVISOR_SOCKET or the standard place).")
def cli() -> None:
    """Control llama-supervisor: images, manifests and the running daemon."""


def _register() -> None:
    """Register every subcommand now (for tools that list them; main() registers lazily)."""
    for module in COMMAND_MODULES:
        _load(module, cli)


def main(argv: list[str] | None = None) -> None:
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
        output.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)
