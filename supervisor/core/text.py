"""Text fit for a terminal: `printable` removes terminal escapes and other control characters.

The CLI prints every line through it (supervisor/cli/output.py) and the runtimes clean a
container's log tail with it (runtime.clean_log). Pure, and free of imports, so that a
`llama-supervisorctl` command does not load structlog just to print.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls (0x9b is a one-byte CSI on some terminals).
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_UNPRINTABLE_BYTES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    """`text` without terminal escapes or other control characters; tabs and newlines stay (layout).

    A manifest's path, a model's reason, a container's log line may hold "\\x1b]0;title\\x07" or
    "\\x1b[2J": printed as is they retitle, clear or reprogram the operator's terminal.
    """
    return _UNPRINTABLE.sub("", text)


def printable_bytes(data: bytes) -> bytes:
    """The same for a byte stream (`tail`): C0 controls but tab and newline, and DEL, removed.

    C1 controls are left alone here: in UTF-8 they are two bytes (0xC2 0x80-0x9F), and the
    bytes 0x80-0x9F are continuation bytes of ordinary characters.
    """
    data = _UNPRINTABLE_BYTES.sub(b"", data)
    return data.replace(b"\xc2\x9b", b"")   # UTF-8 CSI: the one C1 control terminals act on
