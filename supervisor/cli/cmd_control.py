"""llama-supervisorctl's daemon commands: status, start/stop/restart/unload, reread/update/reload, tail, pid, shutdown.

They speak supervisorctl's language: `NAME: started`, `NAME: ERROR (reason)`, and
its exit codes (0 all well, 3 some named model not running, 4 daemon unreachable
or unknown name).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from supervisor.cli import output
from supervisor.cli.where import SOCKET_KEY, resolve_socket
from supervisor.control.api import CommandResult
from supervisor.control.client import ControlClient
from supervisor.core.status import HELD_TEXT, ModelStatus
from supervisor.errors import SupervisorError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4          # also: daemon unreachable (ControlError.exit_code)

_SOCKET_KEY = SOCKET_KEY
NO_SUCH_MODEL = "no such model"

F = TypeVar("F", bound=Callable[..., Any])


class CommandExit(click.ClickException):
    """Ends a command with an exit code; prints `error: message` only when there is one."""

    def __init__(self, exit_code: int, message: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance

    def show(self, file: IO[Any] | None = None) -> None:
        if self.message:
            output.echo(f"error: {self.message}", err=True, file=file)


def speaks_errors(fn: F) -> F:
    """SupervisorError -> `error: ...` and its exit code, with or without ctl.main around us."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SupervisorError as e:
            raise CommandExit(e.exit_code, str(e)) from e

    return wrapper  # type: ignore[return-value]


# --- the socket ------------------------------------------------------------------------------

def _remember_socket(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.meta[_SOCKET_KEY] = value


@contextmanager
def control_client(ctx: click.Context) -> Iterator[ControlClient]:
    client = ControlClient(resolve_socket(ctx.meta.get(_SOCKET_KEY)))
    try:
        yield client
    finally:
        client.close()


# --- status ----------------------------------------------------------------------------------

def format_uptime(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def describe(model: ModelStatus) -> str:
    """The description column: where a running model is, or why it is not running; for an on-demand
    model also when it was last used and when it stops; the memory it counts (and uses)."""
    parts = [_describe_state(model)] if _describe_state(model) else []
    if model.lifecycle == "on-demand":
        on_demand = "on-demand"
        if model.held:      # Docker standby: `docker ps` shows its container Up, at its gate
            on_demand += f", {HELD_TEXT}"
        if model.idle_s is not None:
            on_demand += f", last request {format_uptime(model.idle_s)} ago"
        if model.ttl_left_s is not None:
            on_demand += f", stops when idle in {format_uptime(model.ttl_left_s)}"
        if model.swaps:
            waited = f", the last waited {model.swap_wait_s:.1f}s" if model.swap_wait_s is not None else ""
            on_demand += f", {model.swaps} swap{'s' if model.swaps != 1 else ''}{waited}"
        parts.append(on_demand)
    if model.load_s is not None:
        parts.append(f"last load {model.load_s:.1f}s")
    if model.memory_counted is not None:
        used = f"{_mib(model.memory_used)} used of " if model.memory_used is not None else ""
        parts.append(f"memory {used}{_mib(model.memory_counted)} counted")
    if model.kv_bytes:
        parts.append(f"KV cache {model.kv_tokens} tokens ({_mib(model.kv_bytes)}) kept")
    return ", ".join(parts)


def _describe_state(model: ModelStatus) -> str:
    if model.state == "DRAINING":     # its config changed: requests in flight finish, new ones wait
        return f"{model.reason}; now {model.inflight} in flight, {model.waiting} waiting"
    if model.state in ("RUNNING", "STARTING"):
        parts = []
        if model.port is not None:
            parts.append(f"port {model.port}")
        if model.container_id:
            parts.append(f"container {model.container_id[:8]}")
        if model.state == "RUNNING":
            if model.uptime_s is not None:
                parts.append(f"uptime {format_uptime(model.uptime_s)}")
            parts.append(f"restarts {model.restarts}")
        elif model.reason:
            parts.append(model.reason)
        if model.handover:          # a start-first recreate: the old container serves, or drains its own requests
            parts.append(model.handover)
        return ", ".join(parts)
    if model.reason:
        return model.reason
    if model.last_exit_code is not None and model.state in ("BACKOFF", "FATAL", "EXITED"):
        return f"exited {model.last_exit_code}"
    return ""


def format_status(models: Sequence[ModelStatus]) -> list[str]:
    """supervisorctl's layout: name column max(30, longest)+3 wide, state column 10 wide, description."""
    width = max([30, *(len(m.name) for m in models)]) + 3
    return [f"{m.name:<{width}}{m.state:<10}{describe(m)}".rstrip() for m in models]


@click.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of model status objects.")
@click.pass_context
@speaks_errors
def status(ctx: click.Context, names: tuple[str, ...], as_json: bool) -> None:
    """Show every model's state, or only NAME's. Exit 3 if one is not RUNNING, 4 for an unknown name."""
    with control_client(ctx) as client:
        reply = client.status(names)
    if as_json:
        output.echo(json.dumps([m.to_json() for m in reply.models], indent=2))
    else:
        for line in format_status(reply.models):
            output.echo(line)
        if not reply.models and not names:
            output.echo("no models: add a manifest to the manifest directory, then 'update'", err=True)
        if reply.runtime and not names:
            output.echo(f"runtime: {reply.runtime}", err=True)
    for name in reply.unknown:
        output.echo(f"{name}: ERROR ({NO_SUCH_MODEL})", err=as_json)
    if reply.unknown:
        raise CommandExit(EXIT_UNKNOWN)
    if any(not _as_wanted(m) for m in reply.models):
        raise CommandExit(EXIT_NOT_RUNNING)


def _as_wanted(m: ModelStatus) -> bool:
    """RUNNING, or an on-demand model stopped until its next request (its normal idle state)."""
    return m.state == "RUNNING" or (m.lifecycle == "on-demand" and m.state == "STOPPED")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The OpenAI-style list, as JSON.")
@click.pass_context
@speaks_errors
def models(ctx: click.Context, as_json: bool) -> None:
    """What the gateway serves: each model with its aliases, lifecycle, state, memory counted and the KV
    cache it keeps across stops."""
    with control_client(ctx) as client:
        reply = client.status(())
    if as_json:
        output.echo(json.dumps([{"id": m.name, "aliases": list(m.aliases), "lifecycle": m.lifecycle,
                                "state": m.state, "memory_counted": m.memory_counted, "kv_tokens": m.kv_tokens,
                                "kv_bytes": m.kv_bytes, "kv_note": m.kv_note} for m in reply.models],
                              indent=2))
        return
    width = max([20, *(len(m.name) for m in reply.models)]) + 2
    output.echo(f"{'MODEL':<{width}}{'STATE':<10}{'LIFECYCLE':<11}{'MEMORY':>10}{'KV CACHE':>22}  ALIASES")
    for m in reply.models:
        mem = _mib(m.memory_counted) if m.memory_counted is not None else "-"
        kv = f"{m.kv_tokens} tok, {_mib(m.kv_bytes)}" if m.kv_bytes is not None else "off"
        output.echo(f"{m.name:<{width}}{m.state:<10}{m.lifecycle:<11}{mem:>10}{kv:>22}  {', '.join(m.aliases) or '-'}")


# --- commands --------------------------------------------------------------------------------

def _print_result(result: CommandResult, *, failed_exit: int) -> None:
    """One `NAME: message` line per model, then the exit code the worst line deserves."""
    for r in result.results:
        output.echo(f"{r.name}: {r.message}" if r.ok else f"{r.name}: ERROR ({r.message})")
    for name in result.unknown:
        output.echo(f"{name}: ERROR ({NO_SUCH_MODEL})")
    if result.error:
        output.echo(f"error: {result.error}", err=True)
    if result.unknown:
        raise CommandExit(EXIT_UNKNOWN)
    if not result.ok or any(not r.ok for r in result.results):
        raise CommandExit(failed_exit)


_NAMES = click.argument("names", nargs=-1, required=True, metavar="NAME...|all")


@click.command()
@_NAMES
@click.option("--no-wait", is_flag=True, help="Return once queued instead of waiting for RUNNING.")
@click.pass_context
@speaks_errors
def start(ctx: click.Context, names: tuple[str, ...], no_wait: bool) -> None:
    """Start models and wait until each is RUNNING or has failed."""
    with control_client(ctx) as client:
        _print_result(client.start(names, wait=not no_wait), failed_exit=EXIT_NOT_RUNNING)


@click.command()
@_NAMES
@click.pass_context
@speaks_errors
def stop(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Stop models (their containers are stopped, not removed)."""
    with control_client(ctx) as client:
        _print_result(client.stop(names), failed_exit=EXIT_FAILED)


@click.command()
@_NAMES
@click.option("--no-wait", is_flag=True, help="Return once queued instead of waiting for RUNNING.")
@click.pass_context
@speaks_errors
def restart(ctx: click.Context, names: tuple[str, ...], no_wait: bool) -> None:
    """Stop then start models, waiting until each is RUNNING or has failed."""
    with control_client(ctx) as client:
        _print_result(client.restart(names, wait=not no_wait), failed_exit=EXIT_NOT_RUNNING)


@click.command()
@_NAMES
@click.pass_context
@speaks_errors
def unload(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Stop on-demand models as their idle TTL would: only with no request in flight, and the next request
    starts them again (their KV cache is kept). 'all': every on-demand model."""
    with control_client(ctx) as client:
        _print_result(client.unload(names), failed_exit=EXIT_FAILED)


def _print_changes(result: CommandResult) -> None:
    if result.ok and not result.results and not result.error:
        output.echo("No config updates to models")
    _print_result(result, failed_exit=EXIT_FAILED)


@click.command()
@click.pass_context
@speaks_errors
def reread(ctx: click.Context) -> None:
    """Re-read the manifests and show what changed: NAME: available | changed | disappeared."""
    with control_client(ctx) as client:
        _print_changes(client.reread())


@click.command()
@click.pass_context
@speaks_errors
def update(ctx: click.Context) -> None:
    """Re-read the manifests and apply the changes (only the models that changed)."""
    with control_client(ctx) as client:
        _print_changes(client.update())


@click.command()
@click.pass_context
@speaks_errors
def reload(ctx: click.Context) -> None:
    """Re-read everything and apply it, returning when the daemon has (systemd's ExecReload)."""
    with control_client(ctx) as client:
        result = client.reload()
    _print_result(result, failed_exit=EXIT_FAILED)
    output.echo("reloaded")


@click.command()
@click.option("--stop-models", is_flag=True, help="Stop every model container too (default: leave them running).")
@click.pass_context
@speaks_errors
def shutdown(ctx: click.Context, stop_models: bool) -> None:
    """Stop the daemon; its models keep running unless --stop-models."""
    with control_client(ctx) as client:
        result = client.shutdown(stop_models=stop_models)
    _print_result(result, failed_exit=EXIT_FAILED)
    output.echo("Shut down")


@click.command()
@click.pass_context
@speaks_errors
def pid(ctx: click.Context) -> None:
    """The daemon's process id."""
    with control_client(ctx) as client:
        output.echo(str(client.pid()))


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until interrupted.")
@click.option("-n", "--lines", default=100, show_default=True, type=click.IntRange(min=0), help="Lines of history.")
@click.pass_context
@speaks_errors
def tail(ctx: click.Context, name: str, follow: bool, lines: int) -> None:
    """The model container's log."""
    with control_client(ctx) as client:
        try:
            for chunk in client.logs(name, lines=lines, follow=follow):
                output.write_bytes(chunk)   # a container prints what it likes: no escapes reach the terminal
        except KeyboardInterrupt:
            pass


@click.command()
@click.option("--open", "open_browser", is_flag=True, help="Open it in a browser too.")
@click.pass_context
@speaks_errors
def console(ctx: click.Context, open_browser: bool) -> None:
    """The web console's URL with a login token (it lets whoever opens it start and stop models)."""
    with control_client(ctx) as client:
        url = client.console_url()
    output.echo(url)
    output.echo("Open it in a browser on this machine; the token changes when the daemon restarts.", err=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)


# --- registration ----------------------------------------------------------------------------

COMMANDS = (status, models, start, stop, restart, unload, reread, update, reload, shutdown, pid, tail, console)


def add_socket_option(cli: click.Group) -> None:
    """--socket on a group that lacks it (ctl.py's has it; a test's bare group does not)."""
    if not any(p.name == "socket" for p in cli.params):
        cli.params.append(click.Option(
            ["--socket"], type=click.Path(dir_okay=False, path_type=Path), expose_value=False,
            callback=_remember_socket,
            help="The daemon's control socket (default: $LLAMA_SUPERVISOR_SOCKET or the standard place).",
        ))


def register(cli: click.Group) -> None:
    add_socket_option(cli)
    for command in COMMANDS:
        cli.add_command(command)
