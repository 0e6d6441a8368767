"""Where a command finds the daemon's socket, and the local state (lock, state, cache, manifests) it works on.

`make run` keeps its lock and model cache under var/ by exporting
LLAMA_SUPERVISOR_STATE_DIR and _CACHE_DIR; a second shell has neither, and
would read /var/lib/llama-supervisor or ~/.local/state instead. So the commands
that work on local state ask the daemon on the control socket where its state
is (GET /v1/paths) and use that; what the operator set in the environment still
wins, and with no daemon answering the defaults apply. Each says which it uses.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from supervisor import paths
from supervisor.cli import output
from supervisor.control.client import ControlClient
from supervisor.errors import ControlError

SYSTEM_SOCKET = Path("/run/llama-supervisor/control.sock")
SOCKET_KEY = "llama_supervisor.socket"      # ctx.meta: the --socket given to llama-supervisorctl
FOUND_KEY = "llama_supervisor.found"        # ctx.meta: the Found of a @local_state command
ASK_TIMEOUT_S = 2.0

# Which variables make each location the operator's own choice (the lock follows the state dir).
_EXPLICIT = {
    "state_dir": (paths.STATE_ENV,),
    "cache_dir": (paths.CACHE_ENV,),
    "lock": (paths.LOCK_ENV, paths.STATE_ENV),
    "manifests": (paths.MANIFESTS_ENV,),
}
_FIELDS = tuple(_EXPLICIT)

F = TypeVar("F", bound=Callable[..., Any])


def resolve_socket(explicit: Path | None) -> Path:
    """--socket, else LLAMA_SUPERVISOR_SOCKET, else paths.socket_path(); an operator who is not
    root finds the system daemon's socket when their own per-user one does not exist."""
    if explicit is not None:
        return explicit
    path = paths.socket_path()
    if os.environ.get("LLAMA_SUPERVISOR_SOCKET") or path.exists():
        return path
    return SYSTEM_SOCKET if SYSTEM_SOCKET.exists() else path


@dataclass(frozen=True)
class Found:
    """The locations a command uses, and for each where it came from (for the note it prints)."""

    locations: paths.Locations
    why: Mapping[str, str]            # field of Locations -> "$VAR", "the daemon's (pid N)" or "default: ..."

    def note(self) -> str:
        """`state dir X, cache dir Y (why)`, one reason per group of locations that share it."""
        shown = {"state_dir": "state dir", "cache_dir": "cache dir"}
        if self.locations.lock != self.locations.state_dir / "images.lock.json":
            shown["lock"] = "lock"
        groups: dict[str, list[str]] = {}
        for field, label in shown.items():
            groups.setdefault(self.why[field], []).append(f"{label} {getattr(self.locations, field)}")
        return "; ".join(f"{', '.join(items)} ({why})" for why, items in groups.items())


def merge(own: paths.Locations, environ: Mapping[str, str], daemon: paths.Locations | None,
          *, daemon_why: str, default_why: str) -> Found:
    """Per location: the operator's variable if set, else the daemon's answer, else this process's default."""
    values: dict[str, Path] = {}
    why: dict[str, str] = {}
    for field, variables in _EXPLICIT.items():
        named = next((v for v in variables if environ.get(v)), None)
        if named is not None:
            values[field], why[field] = getattr(own, field), f"from ${named}"
        elif daemon is not None:
            values[field], why[field] = getattr(daemon, field), daemon_why
        else:
            values[field], why[field] = getattr(own, field), default_why
    return Found(paths.Locations(**values), why)


def locate(socket: Path, *, environ: Mapping[str, str] | None = None) -> Found:
    """Ask the daemon on `socket` for its locations (skipped when the environment names them all)."""
    environ = os.environ if environ is None else environ
    own = paths.Locations.current()
    if all(any(environ.get(v) for v in variables) for variables in _EXPLICIT.values()):
        return merge(own, environ, None, daemon_why="", default_why="")
    stranger = _stranger(socket)
    if stranger is not None:
        return merge(own, environ, None, daemon_why="",
                     default_why=f"default; {socket} belongs to uid {stranger}, not to you or root: not asked")
    try:
        with ControlClient(socket, timeout=ASK_TIMEOUT_S) as client:
            daemon, pid = client.locations(), client.pid()
    except ControlError as e:
        reason = f"no daemon answers on {socket}" if not socket.exists() else f"cannot ask the daemon on {socket}: {e}"
        return merge(own, environ, None, daemon_why="", default_why=f"default; {reason}")
    return merge(own, environ, daemon, daemon_why=f"the running daemon's, pid {pid}", default_why="")


def _stranger(socket: Path) -> int | None:
    """The owner of `socket` when it is neither root nor this user (and it is not the system socket,
    under root's /run): a per-user socket under /tmp another user made first could otherwise point
    `verify` at a lock of their choosing. None when the answer may be followed, or there is no socket."""
    try:
        owner = os.stat(socket).st_uid
    except OSError:
        return None
    return None if owner in (0, os.geteuid()) or socket == SYSTEM_SOCKET else owner


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """These variables for the command's duration (the paths module and children read them), then as before."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def local_state(*, announce: bool = True) -> Callable[[F], F]:
    """A command that works on local state runs with the daemon's locations (see the module's opening).

    announce: print the note to stderr; a command whose output is machine-read (hardware --json)
    passes False and reports ctx.meta[FOUND_KEY] itself.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            found = locate(resolve_socket(ctx.meta.get(SOCKET_KEY)))
            ctx.meta[FOUND_KEY] = found
            if announce:
                output.echo(f"using {found.note()}", err=True)
            with _environment(found.locations.env()):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
