"""diff(old, new): added, changed, removed model names."""

from __future__ import annotations

from pathlib import Path

from supervisor.manifest import ManifestDiff, diff, load_dir, load_text

FIXTURES = Path(__file__).parent.parent / "fixtures"

BASE = """\
kind: model
name: {name}
profile: {profile}
source: {{path: /m/{name}.gguf, sha256: {sha}}}
server: {{port: {port}, ctx_size: {ctx}}}
"""
SHA = "cd" * 32


def model(name: str, port: int, *, ctx: int = 2048, profile: str = "auto") -> str:
    return BASE.format(name=name, port=port, ctx=ctx, profile=profile, sha=SHA)


def test_added_changed_removed() -> None:
    old = load_text("---\n".join([model("a", 1), model("b", 2), model("c", 3)]))
    new = load_text("---\n".join([model("a", 1), model("b", 2, ctx=4096), model("d", 4)]))
    assert diff(old, new) == ManifestDiff(added=("d",), changed=("b",), removed=("c",))


def test_same_set_is_empty_and_line_moves_do_not_count() -> None:
    old = load_text(model("a", 1))
    new = load_text("# a comment moves every line\n\n" + model("a", 1))
    assert not diff(old, new)
    assert diff(old, new) == ManifestDiff()


def test_key_order_does_not_count() -> None:
    assert not diff(load_dir(FIXTURES / "reordered_a"), load_dir(FIXTURES / "reordered_b"))


def test_profile_change_changes_its_models_only() -> None:
    prof = "kind: profile\nname: p\nthreads: {t}\n"
    old = load_text("---\n".join([model("a", 1, profile="p"), model("b", 2), prof.format(t=2)]))
    new = load_text("---\n".join([model("a", 1, profile="p"), model("b", 2), prof.format(t=4)]))
    assert diff(old, new) == ManifestDiff(changed=("a",))
