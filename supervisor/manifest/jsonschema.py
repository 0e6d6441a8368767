"""JSON Schema of a manifest document, for editors (yaml-language-server) and docs/manifest.schema.json.

A manifest file opts in with its first line:
    # yaml-language-server: $schema=../docs/manifest.schema.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from supervisor.manifest.schema import Manifest

DEFAULT_PATH = Path("docs/manifest.schema.json")


def manifest_schema() -> dict[str, Any]:
    """One document: `kind: model` or `kind: profile` (additionalProperties false throughout)."""
    schema = TypeAdapter(Manifest).json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "llama-supervisor manifest",
        "description": "One YAML document: kind: model (a llama-server container) or kind: profile.",
        **schema,
    }


def schema_text() -> str:
    return json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(path: Path | str = DEFAULT_PATH) -> Path:
    """Write the schema to `path` (only when its text changed, so editors do not reload for nothing)."""
    target = Path(path)
    text = schema_text()
    if not target.exists() or target.read_text() != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return target
