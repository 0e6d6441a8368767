"""Fixtures shared by the unit tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short temporary directory for Unix sockets (sun_path holds 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="lsv-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
