"""Sizes as operators write them: '512m', '2g', '1.5G' or a number of bytes (binary units, like docker's)."""

from __future__ import annotations

import re

_MEMORY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_memory(value: object) -> object:
    """'512m' / '2g' / '1.5G' / 1073741824 -> bytes (binary units, like docker's)."""
    if isinstance(value, bool):
        raise ValueError("memory must be a size such as 512m or 2g, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _MEMORY_RE.match(value)
        if m is None:
            raise ValueError(f"{value!r} is not a size (fix: write it like 512m, 2g or a number of bytes)")
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    return value
