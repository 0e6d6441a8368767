"""The exported JSON Schema: closed objects, the committed copy is current, manifests point to it."""

from __future__ import annotations

import json
from pathlib import Path

from supervisor.manifest.jsonschema import manifest_schema, schema_text, write_schema

ROOT = Path(__file__).parent.parent.parent


def test_every_object_forbids_unknown_keys() -> None:
    schema = manifest_schema()
    assert schema["discriminator"]["propertyName"] == "kind"
    for name, definition in schema["$defs"].items():
        assert definition.get("additionalProperties") is False, name


def test_model_requires_kind_name_source_server() -> None:
    model = manifest_schema()["$defs"]["ModelManifest"]
    assert sorted(model["required"]) == ["kind", "name", "server", "source"]


def test_committed_schema_is_current() -> None:
    assert (ROOT / "docs" / "manifest.schema.json").read_text() == schema_text(), (
        "run 'llama-supervisorctl schema --out docs/manifest.schema.json'"
    )


def test_write_schema(tmp_path: Path) -> None:
    out = write_schema(tmp_path / "s.json")
    assert json.loads(out.read_text())["title"] == "llama-supervisor manifest"


def test_default_manifests_reference_the_schema() -> None:
    for f in sorted((ROOT / "manifests").glob("*.yaml")):
        assert f.read_text().startswith("# yaml-language-server: $schema=../docs/manifest.schema.json\n"), f
