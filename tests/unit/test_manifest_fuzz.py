"""load_dir on random, garbled and structurally bad YAML: only ManifestError, every problem starting with file:line:."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from supervisor.errors import ManifestError
from supervisor.manifest import load_dir
from supervisor.manifest.loader import ManifestSet
from supervisor.manifest.schema import KINDS as KINDS_BY_NAME

from .manifest_strategies import KINDS, RENDER_ONLY, Case, bad_manifest_files, garbled


def _load(texts: tuple[str, ...] | list[str]) -> list[str] | None:
    """The problems load_dir reports, each checked for file:line:; None when the set loads, and then
    what loaded is checked against the files themselves (see _accepted), so accepting garbage fails."""
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"{tmp}/f{i}.yaml" for i in range(len(texts))]
        for name, text in zip(names, texts):
            Path(name).write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            loaded = load_dir(tmp)
        except ManifestError as e:
            assert e.problems
            pattern = re.compile("^(" + "|".join(re.escape(n) for n in names) + r"):[0-9]+: \S")
            for problem in e.problems:
                assert pattern.match(problem), problem
                assert "\n" not in problem, problem
            return list(e.problems)
        _accepted([Path(n).read_bytes() for n in names], loaded)
    return None


def _accepted(raw: list[bytes], loaded: ManifestSet) -> None:
    """An independent oracle for a set load_dir accepted: UTF-8 YAML whose every non-empty document is a
    mapping the schema of its kind validates, names and ports unique, profiles named by models present,
    and exactly those documents in the result (the loader already bounded aliases, so this parse is safe)."""
    docs = [d for text in raw for d in yaml.safe_load_all(text.decode("utf-8")) if d is not None]
    models, profiles = [], []
    for doc in docs:
        assert isinstance(doc, dict) and doc.get("kind") in KINDS_BY_NAME, f"accepted a non-manifest: {doc!r}"
        manifest = KINDS_BY_NAME[doc["kind"]].model_validate(doc)   # raises if the loader let a bad one in
        (models if doc["kind"] == "model" else profiles).append(manifest)
    assert sorted(m.name for m in models) == sorted(loaded.models), (docs, loaded)
    assert sorted(p.name for p in profiles) == sorted(loaded.profiles), (docs, loaded)
    ports = [m.server.port for m in models if m.server.port is not None]
    assert len(ports) == len(set(ports)), f"accepted a repeated port: {ports}"
    assert all(m.profile == "auto" or m.profile in loaded.profiles for m in models), loaded


def test_the_oracle_refuses_what_a_lax_loader_would_accept() -> None:
    """_accepted is what makes the fuzz tests above fail when garbage loads: it must see garbage."""
    for text in (b"- a list\n", b"kind: modle\nname: x\n", b"kind: model\nname: x\n"):
        with pytest.raises((AssertionError, ValidationError)):
            _accepted([text], ManifestSet())
    _accepted([b"# only a comment\n---\n"], ManifestSet())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(garbled(), min_size=1, max_size=3))
def test_load_dir_raises_only_manifest_error_with_file_line(texts: list[str]) -> None:
    _load(texts)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=45, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bad_manifests_of_each_kind_are_refused_with_file_line(kind: str, data: st.DataObject) -> None:
    case: Case = data.draw(bad_manifest_files(kind=kind))
    problems = _load(case.texts)
    if case.must_fail and kind not in RENDER_ONLY:
        assert problems, f"{kind} accepted:\n" + "\n---\n".join(case.texts)
