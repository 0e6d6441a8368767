"""Manifests: YAML `kind: model` / `kind: profile` documents, their schema, loader and diff."""

from __future__ import annotations

from supervisor.manifest.loader import ManifestDiff, ManifestSet, Origin, diff, load_dir, load_text
from supervisor.manifest.schema import ModelManifest, ProfileManifest

__all__ = [
    "ManifestDiff",
    "ManifestSet",
    "ModelManifest",
    "Origin",
    "ProfileManifest",
    "diff",
    "load_dir",
    "load_text",
]
