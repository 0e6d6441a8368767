"""Hostile extra_args (docs/SECURITY.md, 'extra_args'): nothing that moves where the server listens,
reads or writes, nothing that fetches or runs code, no secret on the command line, no flag-like values."""

from __future__ import annotations

import json

import pytest

from supervisor.lock import ImageLock

from .test_render import FLAGS, one, record

# The image knows every flag below (as the real llama-server does), so only the policy can refuse them.
HOSTILE = ("--log-file", "--slot-save-path", "--path", "--media-path", "--models-dir", "--model-url", "-mu",
           "--hf-repo", "--hf-token", "-hft", "--rpc", "--lora", "--mmproj", "-mmu", "--ssl-key-file",
           "--reuse-port", "--api-prefix", "--tools", "--webui-mcp-proxy", "--chat-template-file",
           "--grammar-file", "-md", "--docker-repo", "--some-future-thing-file", "--new-cache-dir")
LOCK = ImageLock({"cpu-avx512": record("cpu-avx512", FLAGS | set(HOSTILE) | {"--alias", "--no-webui-mcp-proxy"})})


def extra(*tokens: str) -> str:
    return "\n" + "".join(f"    - {json.dumps(t)}\n" for t in tokens)   # YAML reads JSON strings


def model_with(tokens: tuple[str, ...]) -> str:
    from .test_render import model

    return model(extra(*tokens))


@pytest.mark.parametrize("flag", HOSTILE)
def test_flags_that_reach_outside_the_manifest_are_refused_with_file_and_line(flag: str) -> None:
    m, problems = one(model_with((flag, "x")), lock=LOCK)
    assert m is None
    assert len(problems) == 1 and problems[0].startswith("m.yaml:8: extra_args sets " + flag), problems
    assert "(fix: remove it" in problems[0]


@pytest.mark.parametrize("flag", ["--log-file", "--hf-token"])
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


def test_harmless_flags_and_negative_numbers_still_pass() -> None:
    m, problems = one(model_with(("--alias", "my-model", "--no-webui-mcp-proxy", "-n", "-1", "--jinja")),
                      lock=LOCK)
    assert problems == [] and m is not None
