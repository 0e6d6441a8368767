"""load_dir on random, garbled and structurally bad YAML: only ManifestError, every problem starting with file:line:."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.errors import ManifestError
from supervisor.manifest import load_dir

from .manifest_strategies import KINDS, RENDER_ONLY, Case, bad_manifest_files, garbled


def _load(texts: tuple[str, ...] | list[str]) -> list[str] | None:
    """The problems load_dir reports (None when the set loads), each checked for file:line:."""
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"{tmp}/f{i}.yaml" for i in range(len(texts))]
        for name, text in zip(names, texts):
            Path(name).write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_dir(tmp)
        except ManifestError as e:
            assert e.problems
            pattern = re.compile("^(" + "|".join(re.escape(n) for n in names) + r"):[0-9]+: \S")
            for problem in e.problems:
                assert pattern.match(problem), problem
                assert "\n" not in problem, problem
            return list(e.problems)
    return None


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
