"""load_dir on random and garbled YAML: only ManifestError, every problem starting with file:line:."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.errors import ManifestError
from supervisor.manifest import load_dir

VALID = (Path(__file__).parent.parent / "fixtures" / "valid" / "models.yaml").read_text()
YAMLISH = st.sampled_from(list(":-[]{}&*!|>'\"#%@`,?\n\t ") + ["---", "...", "<<", "kind", "model", "profile",
                                                               "name", "port", "server", "&a", "*a", "!!int"])


@st.composite
def garbled(draw: st.DrawFn) -> str:
    how = draw(st.sampled_from(["text", "tokens", "mutate"]))
    if how == "text":
        return draw(st.text(max_size=300))
    if how == "tokens":
        return "".join(draw(st.lists(st.one_of(YAMLISH, st.text(max_size=5)), max_size=80)))
    pos = draw(st.integers(0, len(VALID)))
    cut = draw(st.integers(0, 20))
    return VALID[:pos] + draw(st.text(max_size=10) | YAMLISH) + VALID[pos + cut:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(garbled(), min_size=1, max_size=3))
def test_load_dir_raises_only_manifest_error_with_file_line(texts: list[str]) -> None:
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
