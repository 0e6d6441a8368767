"""Manifests: YAML `kind: model` / `kind: profile` documents, their schema and loader.

What a re-read changes is computed on the rendered models (core.planner.diff), so
that a profile or image change counts as well as a manifest edit.
"""

from __future__ import annotations

from supervisor.manifest.loader import ManifestSet, Origin, load_dir, load_text
from supervisor.manifest.schema import ModelManifest, ProfileManifest

__all__ = [
    "ManifestSet",
    "ModelManifest",
    "Origin",
    "ProfileManifest",
    "load_dir",
    "load_text",
]
