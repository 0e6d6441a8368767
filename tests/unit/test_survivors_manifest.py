"""Mutants of supervisor/manifest that survived `make mutate` (docs/TESTING.md): each name or alias
names one model (the gateway routes by both), profile names are unique, and a problem's line and
wording point at the place to fix."""

from __future__ import annotations

import pytest

from supervisor.errors import ManifestError
from supervisor.manifest import load_text

SHA = "1a" * 32


def model(name: str, port: int, *, aliases: str = "", extra: str = "") -> str:
    text = (f"kind: model\nname: {name}\nsource:\n  path: /srv/models/{name}.gguf\n  sha256: {SHA}\n"
            f"server:\n  port: {port}\nresources:\n  memory: 1g\n")
    if aliases:
        text += f"aliases: [{aliases}]\n"
    return text + extra


def problems(*docs: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_text("---\n".join(docs), name="m.yaml")
    return info.value.problems


def test_an_alias_repeated_or_equal_to_its_own_name_is_refused_at_its_line() -> None:
    assert problems(model("a", 1, aliases="x, y, x")) == [
        "m.yaml:10: alias 'x' of model 'a' is repeated (fix: remove it)"]
    assert problems(model("a", 1, aliases="a")) == [
        "m.yaml:10: alias 'a' of model 'a' is repeated (fix: remove it)"]


def test_an_alias_naming_another_model_or_its_alias_is_refused_with_both_places() -> None:
    assert problems(model("a", 1, aliases="one"), model("b", 2, aliases="two, a")) == [
        "m.yaml:21: alias 'a' of model 'b' already names model 'a' at m.yaml:2"
        " (fix: remove the alias or rename one of them)"]
    assert problems(model("a", 1, aliases="one"), model("b", 2, aliases="one")) == [
        "m.yaml:21: alias 'one' of model 'b' already names model 'a' at m.yaml:2"
        " (fix: remove the alias or rename one of them)"]


def test_a_model_named_like_an_earlier_models_alias_is_refused_at_its_name() -> None:
    assert problems(model("a", 1, aliases="b"), model("b", 2)) == [
        "m.yaml:13: model name 'b' is already an alias of model 'a' at m.yaml:2"
        " (fix: rename the model or remove the alias)"]


def test_distinct_names_and_aliases_load() -> None:
    s = load_text("---\n".join([model("a", 1, aliases="x, y"), model("b", 2, aliases="z")]))
    assert s.models["a"].aliases == ("x", "y") and s.models["b"].aliases == ("z",)


def test_a_profile_name_used_twice_is_refused_naming_both_and_the_rest_still_checked() -> None:
    profile = "kind: profile\nname: p\nvariant: auto\n"
    assert problems(profile, profile, profile, model("a", 1, extra="colour: red\n")) == [
        "m.yaml:6: profile name 'p' is already used at m.yaml:2 (fix: rename one of them)",
        "m.yaml:10: profile name 'p' is already used at m.yaml:2 (fix: rename one of them)",
        "m.yaml:22: unknown key 'colour' (fix: allowed keys: aliases, health, idle_ttl, kind, lifecycle, logs,"
        " max_queue, name, profile, resources, restart, server, source)",
    ]
