"""Mutants of supervisor/manifest that survived `make mutate` (docs/TESTING.md): each name or alias
names one model (the gateway routes by both), profile names are unique, and a problem's line and
wording point at the place to fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.errors import ManifestError
from supervisor.manifest import load_text
from supervisor.manifest.jsonschema import schema_text, write_schema

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
        "m.yaml:22: unknown key 'colour' (fix: allowed keys: aliases, health, idle_ttl, kind, kv_cache, lifecycle, logs,"
        " max_queue, name, preload, profile, resources, restart, server, source)",
    ]


def test_an_unknown_key_deep_in_a_list_names_its_section_and_the_keys_allowed_there() -> None:
    text = ("kind: model\nname: a\nsource:\n"
            f"  pypi: {{package: p, version: '1', bogus: 1, wheels: [{{name: p, version: '1', sha256: {SHA}, colour: 2}}]}}\n"
            f"  sha256: {SHA}\n  file: f.gguf\nserver:\n  port: 1\nresources:\n  memory: 1g\n")
    assert problems(text) == [
        "m.yaml:4: unknown key 'colour' in source.pypi.wheels.0 (fix: allowed keys: name, sha256, version)",
        "m.yaml:4: unknown key 'bogus' in source.pypi (fix: allowed keys: package, version, wheels)",
    ]


def test_an_unknown_key_suggests_only_the_closest_allowed_key() -> None:
    assert problems(model("a", 1, extra="restart: {policy: always, backoff: 1}\n")) == [
        "m.yaml:10: unknown key 'backoff' in restart (fix: did you mean 'backoff_max'? allowed keys:"
        " backoff_initial, backoff_max, max_failures, policy)"]


def test_a_missing_key_in_a_section_names_the_section_and_what_to_write() -> None:
    text = "kind: model\nname: a\nsource:\n  path: /srv/models/a.gguf\nserver:\n  port: 1\nresources:\n  memory: 1g\n"
    assert problems(text) == [
        "m.yaml:3: missing required key 'sha256' in source"
        " (fix: add 'sha256:' with the file's SHA-256, 64 lowercase hex digits)"]


@pytest.mark.parametrize(("n", "shown"), [(58, "'" + "x" * 58 + "'"), (59, "'" + "x" * 56 + "...")])
def test_a_wrong_value_is_quoted_whole_up_to_60_characters_then_cut(n: int, shown: str) -> None:
    text = model("a", 1).replace("  port: 1\n", f"  port: 1\n  ctx_size: '{'x' * n}'\n")
    assert problems(text) == [
        "m.yaml:8: server.ctx_size: Input should be a valid integer, unable to parse string as an integer,"
        f" got {shown} (fix: set server.ctx_size to a context size in tokens, 0 for the model's own)"]


def test_a_yaml_error_gives_its_context_and_problem_at_the_problems_line() -> None:
    assert problems("kind: model\na: [1, 2\nb: 3\n") == [
        "m.yaml:3: YAML syntax error: while parsing a flow sequence, expected ',' or ']', but got ':'"
        " (fix: correct the YAML at this line)"]


def test_flash_attn_off_in_yaml_1_1_is_read_back_as_off() -> None:
    text = model("a", 1).replace("  port: 1\n", "  port: 1\n  flash_attn: off\n")
    assert load_text(text).models["a"].server.flash_attn == "off"


def test_extra_args_turn_numbers_into_strings_but_refuse_booleans() -> None:
    ok = model("a", 1).replace("  port: 1\n", "  port: 1\n  extra_args: [--n-predict, 128, --temp, 0.5]\n")
    assert load_text(ok).models["a"].server.extra_args == ("--n-predict", "128", "--temp", "0.5")
    bad = model("a", 1).replace("  port: 1\n", "  port: 1\n  extra_args: [true]\n")
    assert problems(bad) == ["m.yaml:8: server.extra_args.0: Input should be a valid string, got True"
                             " (fix: see docs/DESIGN.md)"]


def test_load_text_names_an_unnamed_text_string() -> None:
    with pytest.raises(ManifestError) as info:
        load_text("kind: model\ncolour: red\n")
    assert info.value.problems[0].startswith("<string>:"), info.value.problems


def test_write_schema_creates_folders_rewrites_a_stale_file_and_leaves_a_current_one(tmp_path: Path) -> None:
    out = write_schema(tmp_path / "a" / "b" / "s.json")
    assert out.read_text() == schema_text()
    os.utime(out, ns=(1_000_000_000, 1_000_000_000))
    write_schema(out)
    assert out.stat().st_mtime_ns == 1_000_000_000, "rewritten although its text was current"
    out.write_text("{}")
    write_schema(out)
    assert out.read_text() == schema_text(), "a stale schema was left in place"
