"""Model files: where they live, how they are fetched, how they are verified."""

from __future__ import annotations

from pathlib import Path

from supervisor import paths


def cache_path(sha256: str, filename: str) -> Path:
    """Where a fetched model lives: <cache>/models/<sha256>/<filename>."""
    return paths.cache_dir() / "models" / sha256 / filename
