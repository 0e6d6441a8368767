"""hypothesis strategies for bad manifests, shared by the loader fuzz and the daemon reload fuzz.

`bad_manifest_files()` draws a few files' texts plus whether the set must be refused:
garbled text, wrong types, unknown keys, huge numbers, unicode, truncated YAML,
duplicate names and ports across files, YAML bombs, unknown flags and profiles.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

VALID = (Path(__file__).parent.parent / "fixtures" / "valid" / "models.yaml").read_text()
YAMLISH = st.sampled_from(list(":-[]{}&*!|>'\"#%@`,?\n\t ") + ["---", "...", "<<", "kind", "model", "profile",
                                                               "name", "port", "server", "&a", "*a", "!!int"])

SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

# Where a value of a known type sits: (path, a value of the right type)
TYPED = [
    (("name",), "m"), (("server", "port"), 8081), (("server", "ctx_size"), 512), (("server", "threads"), 1),
    (("server", "parallel"), 1), (("server", "extra_args"), []), (("health", "interval"), 1),
    (("health", "failures"), 2), (("restart", "max_failures"), 3), (("restart", "backoff_initial"), 1),
    (("resources", "memory"), "1g"), (("resources", "pids"), 128), (("source", "sha256"), SHA),
    (("restart", "policy"), "always"), (("server", "flash_attn"), "auto"),
]
NUMERIC = [p for p, v in TYPED if isinstance(v, int)]
HUGE = st.sampled_from([2**63, 2**64 + 1, -(2**63), 10**100, 1e308, -1e308, 1e-320, float("inf"), -1])


def model_doc(name: str, port: int) -> dict[str, Any]:
    return {
        "kind": "model", "name": name,
        "source": {"path": "/srv/models/fuzz.gguf", "sha256": SHA},
        "profile": "auto",
        "server": {"port": port, "ctx_size": 512, "threads": 1},
        "health": {"interval": 1, "timeout": 1, "failures": 2},
        "restart": {"max_failures": 3, "backoff_initial": 1},
        "resources": {"memory": "1g", "pids": 128},
    }


def _set(doc: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        doc = doc.setdefault(key, {})
    doc[path[-1]] = value


def dump(doc: object) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


@dataclass(frozen=True)
class Case:
    kind: str
    texts: tuple[str, ...]
    must_fail: bool          # the set is certainly invalid (False: it may or may not be)


WRONG = st.one_of(st.text(max_size=8).filter(lambda s: not s.strip().lstrip("-").replace(".", "").isdigit()),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                       min_size=1, max_size=2),
                  st.booleans(), st.none())


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


KINDS = ("garbled", "wrong_type", "unknown_key", "huge_number", "unicode", "truncated", "duplicate_name",
         "duplicate_port", "yaml_bomb", "recursive_alias", "unknown_flag", "missing_profile", "bad_kind")
RENDER_ONLY = frozenset({"unknown_flag"})    # caught when rendered against the image lock, not by load_dir
NULLABLE = {("server", "threads"), ("server", "port"), ("resources", "memory")}   # port null: the engine picks
SECONDS = {("health", "interval"), ("restart", "backoff_initial")}


@st.composite
def bad_manifest_files(draw: st.DrawFn, *, kind: str | None = None, base_name: str = "fz",
                       base_port: int = 40000) -> Case:
    if kind is None:
        kind = draw(st.sampled_from(KINDS))
    base_name += "-" + draw(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True))
    base_port += draw(st.integers(0, 1000))
    doc = model_doc(f"{base_name}-x", base_port + 1)
    if kind == "garbled":
        return Case(kind, tuple(draw(st.lists(garbled(), min_size=1, max_size=3))), False)
    if kind == "wrong_type":
        path, right = draw(st.sampled_from(TYPED))
        wrong = draw(WRONG.filter(lambda v: type(v) is not type(right) and v != right))
        if isinstance(wrong, bool) and (isinstance(right, (int, float)) or path == ("server", "flash_attn")):
            wrong = "many"    # YAML 1.1's on/off: flash_attn takes booleans; a bool is no number either
        _set(doc, path, wrong)
        return Case(kind, (dump(doc),), not (wrong is None and path in NULLABLE))
    if kind == "unknown_key":
        section = draw(st.sampled_from([(), ("server",), ("health",), ("restart",), ("resources",), ("source",)]))
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in doc and k.strip() == k))
        target = doc
        for s in section:
            target = target[s]
        if key in target:
            return Case(kind, (dump(doc),), False)
        target[key] = draw(st.integers() | st.text(max_size=5))
        return Case(kind, (dump(doc),), True)
    if kind == "huge_number":
        path = draw(st.sampled_from(NUMERIC))
        value = draw(HUGE)
        _set(doc, path, value)
        return Case(kind, (dump(doc),), not (value == 1e-320 and path in SECONDS))
    if kind == "unicode":
        text = draw(st.text(st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), min_size=1, max_size=20))
        path = draw(st.sampled_from([("name",), ("profile",), ("server", "host"), ("resources", "memory"),
                                     ("source", "sha256")]))
        _set(doc, path, text)
        return Case(kind, (dump(doc),), True)
    if kind == "truncated":
        text = dump(doc)
        return Case(kind, (text[: draw(st.integers(0, len(text) - 1))],), False)
    if kind == "duplicate_name":
        other = model_doc(f"{base_name}-x", base_port + 2)
        return Case(kind, (dump(doc), dump(other)), True)
    if kind == "duplicate_port":
        other = model_doc(f"{base_name}-y", base_port + 1)
        return Case(kind, (dump(doc), dump(other)), True)
    if kind == "yaml_bomb":
        levels = draw(st.integers(3, 12))
        width = draw(st.integers(5, 12))
        lines = ['a0: &a0 ["lol"]']
        for i in range(1, levels):
            lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
        lines.append(f"kind: model\nname: {base_name}-bomb\nserver: {{port: *a{levels - 1}}}")
        return Case(kind, ("\n".join(lines) + "\n",), True)
    if kind == "recursive_alias":
        return Case(kind, (f"kind: model\nname: &n {base_name}-r\nserver: &s {{port: 1, self: *s}}\n",), True)
    if kind == "unknown_flag":
        doc["server"]["extra_args"] = [draw(st.sampled_from(["--no-such-flag", "--mlock", "--rm-rf"]))]
        return Case(kind, (dump(doc),), True)
    if kind == "missing_profile":
        doc["profile"] = draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True).filter(lambda p: p != "auto"))
        return Case(kind, (dump(doc),), True)
    doc2 = copy.deepcopy(doc)
    doc2["kind"] = draw(st.sampled_from(["Model", "modell", "", "service", 1]))
    return Case(kind, (dump(doc2),), True)
