"""Hostile extra_args (docs/SECURITY.md, 'extra_args'): only flags on the allowlist pass; nothing that moves
where the server listens, reads or writes, fetches, runs code or turns a rendered-off feature back on; no
flag-like values. The image here knows every flag the real llama-server 11434 lists (tests/fixtures), plus
made-up future ones, so only the policy can refuse them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from supervisor.artifacts.images import parse_help
from supervisor.artifacts.lock import ImageLock

from .test_render import one, record

HELP = Path(__file__).parents[1] / "fixtures" / "llama-server-help-11434.txt"
REAL_FLAGS, REAL_WARNED = parse_help(HELP.read_text())
FUTURE = frozenset({"--exec-hook", "--some-future-thing-file", "--new-cache-dir", "--agent-json"})
WITH_WARNINGS = dataclasses.replace(record("cpu-avx512", REAL_FLAGS | FUTURE), warned_flags=REAL_WARNED)
LOCK = ImageLock({"cpu-avx512": WITH_WARNINGS})
OLD_LOCK = ImageLock({"cpu-avx512": dataclasses.replace(WITH_WARNINGS, warned_flags=frozenset())})  # before the field

# The exploits of issue 15: code execution, file access and SSRF through the agent's tools, MCP and the CORS proxy.
EXPLOITS = ("--agent", "-ag", "--tools", "--tools-runtime", "--mcp-servers-json", "--mcp-servers-config",
            "--webui-mcp-proxy", "--ui-mcp-proxy", "--cors-origins", "--cors-credentials", "--webui", "--ui")
# Earlier review: listening, files, fetches, secrets (the suffix rule missed -json and -config).
REACH_OUT = ("--log-file", "--slot-save-path", "--path", "--media-path", "--models-dir", "--models-preset", "-mu",
             "--hf-token", "-hft", "--rpc", "--lora", "--mmproj", "-mmu", "--ssl-key-file", "--reuse-port",
             "--api-prefix", "--chat-template-file", "--grammar-file", "-md", "--docker-repo", "--props", "--slots",
             "--webui-config", "--override-kv", "--list-devices", "--cache-list", "--offline", "-lcd")


def extra(*tokens: str) -> str:
    return "\n" + "".join(f"    - {json.dumps(t)}\n" for t in tokens)   # YAML reads JSON strings


def model_with(tokens: tuple[str, ...]) -> str:
    from .test_render import model

    return model(extra(*tokens))


@pytest.mark.parametrize("lock", [LOCK, OLD_LOCK], ids=["lock", "lock-without-warned_flags"])
@pytest.mark.parametrize("flag", EXPLOITS + REACH_OUT + tuple(sorted(FUTURE)))
def test_every_flag_off_the_allowlist_is_refused_with_file_and_line(flag: str, lock: ImageLock) -> None:
    m, problems = one(model_with((flag, "x")), lock=lock)
    assert m is None
    assert len(problems) == 1 and problems[0].startswith("m.yaml:8: extra_args sets " + flag), problems
    assert "(fix: remove it" in problems[0]


@pytest.mark.parametrize("flag", sorted(FUTURE))
def test_a_flag_a_new_release_adds_is_refused_until_it_is_on_the_allowlist(flag: str) -> None:
    _, [problem] = one(model_with((flag,)), lock=LOCK)
    assert problem == (
        f"m.yaml:8: extra_args sets {flag}, which is not on the allowlist of flags that only tune inference or"
        f" performance (fix: remove it; if it only tunes inference, propose adding it to GROUPS in"
        f" supervisor/render/allowed_flags.py)")


@pytest.mark.parametrize("flag", ["--agent", "-no-ag", "--no-webui-mcp-proxy", "--cors-origins", "--webui"])
def test_the_features_the_supervisor_renders_off_cannot_be_set_again(flag: str) -> None:
    _, [problem] = one(model_with((flag,)), lock=LOCK)
    assert f"extra_args sets {flag}, which the supervisor renders itself (fix: remove it: the supervisor turns off" \
        in problem and "docs/SECURITY.md" in problem


@pytest.mark.parametrize("flag", ["--mcp-servers-json", "--tools"])
def test_a_flag_whose_help_warns_against_untrusted_environments_is_refused(flag: str) -> None:
    _, [problem] = one(model_with((flag, '{"mcpServers": {"x": {"command": "/bin/sh"}}}')), lock=LOCK)
    assert problem == (
        f"m.yaml:8: extra_args sets {flag}, whose --help in image llama-supervisor/llama-server:cpu-avx512"
        f" (version: 7000 (test)) warns against untrusted environments (fix: remove it; no manifest may enable it)")


def test_the_help_warning_wins_over_the_allowlist() -> None:
    """A release whose --help starts warning about an allowed flag: refused, whatever the table says."""
    warned = dataclasses.replace(WITH_WARNINGS, warned_flags=REAL_WARNED | {"--temp"})
    m, problems = one(model_with(("--temp", "0.7")), lock=ImageLock({"cpu-avx512": warned}))
    assert m is None and len(problems) == 1 and "warns against untrusted environments" in problems[0], problems
    m, problems = one(model_with(("--temp", "0.7")), lock=LOCK)
    assert problems == [] and m is not None


def test_flash_attn_stays_the_manifests_key() -> None:
    _, [problem] = one(model_with(("-fa", "on")), lock=LOCK)
    assert problem == ("m.yaml:8: extra_args sets -fa, which the supervisor renders itself"
                       " (fix: remove it and use server.flash_attn)")


def test_an_unknown_flag_is_pointed_at_an_allowed_one_never_at_a_refused_one() -> None:
    _, [problem] = one(model_with(("--agnet",)), lock=LOCK)
    assert "is not a flag of llama-server" in problem and "--agent" not in problem.split("(fix:")[1], problem
    _, [problem] = one(model_with(("--top_k", "40")), lock=LOCK)   # llama.cpp reads '_' as '-': not us
    assert problem.endswith("(fix: did you mean '--top-k'?)"), problem


@pytest.mark.parametrize("flag", ["--log-file", "--hf-token", "--agent"])
def test_the_equals_spelling_is_refused_too(flag: str) -> None:
    m, problems = one(model_with((f"{flag}=/tmp/x",)), lock=LOCK)
    assert m is None and len(problems) == 1 and flag in problems[0]


def test_a_value_that_looks_like_a_flag_is_refused() -> None:
    m, problems = one(model_with(("--alias=--host=0.0.0.0",)), lock=LOCK)
    assert m is None and len(problems) == 1 and "looks like a flag" in problems[0], problems
    m, problems = one(model_with(("--alias", "--port")), lock=LOCK)   # as two items: --port is a flag
    assert m is None and len(problems) == 1 and "--port" in problems[0], problems


@pytest.mark.parametrize("token", ["--alias\n--host", "x\x00y", "\x1b[2J", ""])
def test_control_characters_and_empty_items_are_refused(token: str) -> None:
    m, problems = one(model_with(("--alias", token)), lock=LOCK)
    assert m is None and len(problems) == 1 and "control character" in problems[0], problems


def test_inference_and_performance_flags_and_negative_numbers_pass() -> None:
    tokens = ("--temp", "0.7", "--top-k", "40", "--min-p", "0.05", "--repeat-penalty", "1.1", "-n", "-1",
              "--seed", "42", "--jinja", "--reasoning-format", "deepseek", "--alias", "my-model", "-ub", "256",
              "--cache-reuse", "256", "--no-context-shift", "-tb", "2", "--load-mode", "mmap", "--metrics",
              "--no-slots", "--verbose", "--spec-type", "ngram-simple", "--logit-bias", "15043-1")
    m, problems = one(model_with(tokens), lock=LOCK)
    assert problems == [] and m is not None
    assert m.spec.argv[-len(tokens):] == tokens  # type: ignore[attr-defined]
