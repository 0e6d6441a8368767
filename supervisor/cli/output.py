"""Everything the CLIs print goes through here, made safe for a terminal (`core.text.printable`).

Manifest paths, a model's reason, problems, container logs: any of it may hold terminal
escapes ("\x1b]0;title\x07", "\x1b[2J") that would retitle, clear or reprogram the
operator's terminal. A test keeps every other CLI module off click.echo and sys.stdout,
so a new command cannot forget.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import click

from supervisor.core.text import printable, printable_bytes


def echo(text: str = "", *, err: bool = False, nl: bool = True, file: IO[Any] | None = None) -> None:
    """click.echo of `text` without control characters (tabs and newlines kept)."""
    click.echo(printable(text), err=err, nl=nl, file=file)


def write_bytes(data: bytes) -> None:
    """A raw stream (a log `tail`), control bytes removed, flushed at once."""
    out = sys.stdout.buffer
    out.write(printable_bytes(data))
    out.flush()
