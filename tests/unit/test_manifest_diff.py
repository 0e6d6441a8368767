"""What a re-read changes, as the daemon computes it: manifests rendered, then planner.diff.

A model's manifest or the profile it uses changing makes it `changed`; comments,
moved lines and key order do not.
"""

from __future__ import annotations

from pathlib import Path

from supervisor.render import desired as render
from supervisor.core.planner import Diff, diff
from supervisor.manifest import ManifestSet, load_text

from .test_render import HOST, LOCK

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


def desired(manifests: ManifestSet) -> dict[str, object]:
    models, problems = render.render_all(manifests, LOCK, HOST, file_sizes={})
    assert problems == []
    return models  # type: ignore[return-value]


def reread(old: ManifestSet, new: ManifestSet) -> Diff:
    return diff(desired(old), desired(new))  # type: ignore[arg-type]


def test_added_changed_removed() -> None:
    old = load_text("---\n".join([model("a", 1), model("b", 2), model("c", 3)]))
    new = load_text("---\n".join([model("a", 1), model("b", 2, ctx=4096), model("d", 4)]))
    assert reread(old, new) == Diff(added=("d",), changed=("b",), removed=("c",))


def test_moved_lines_and_comments_do_not_count() -> None:
    old = load_text(model("a", 1))
    new = load_text("# a comment moves every line\n\n" + model("a", 1))
    assert reread(old, new).empty


def test_key_order_does_not_count() -> None:
    # The same file rewritten with its keys in another order.
    a = (FIXTURES / "reordered_a" / "m.yaml").read_text()
    b = (FIXTURES / "reordered_b" / "m.yaml").read_text()
    assert a != b
    assert reread(load_text(a, name="m.yaml"), load_text(b, name="m.yaml")).empty


def test_profile_change_changes_its_models_only() -> None:
    prof = "kind: profile\nname: p\nthreads: {t}\n"
    old = load_text("---\n".join([model("a", 1, profile="p"), model("b", 2), prof.format(t=2)]))
    new = load_text("---\n".join([model("a", 1, profile="p"), model("b", 2), prof.format(t=1)]))
    assert reread(old, new) == Diff(added=(), changed=("a",), removed=())
