"""The extra_args allowlist (supervisor/render/allowed_flags.py) against the pinned llama-server's own --help
(tests/fixtures/llama-server-help-11434.txt, `llama-server --help` of build 11434; the Docker test
tests/integration/test_allowed_flags_image.py checks the same against the built image)."""

from __future__ import annotations

from pathlib import Path

from supervisor.render.allowed_flags import ALLOWED, GROUPS, OTHER_RELEASES
from supervisor.artifacts.images import parse_help, parse_help_flags
from supervisor.render.argv import RESERVED

HELP = (Path(__file__).parents[1] / "fixtures" / "llama-server-help-11434.txt").read_text()
FLAGS, WARNED = parse_help(HELP)
# What llama.cpp 11434's --help says "do not enable in untrusted environments" about, every spelling.
EXPECTED_WARNED = {"-ag", "--agent", "-no-ag", "--no-agent", "--tools", "--mcp-servers-json", "--mcp-servers-config",
                   "--ui-mcp-proxy", "--webui-mcp-proxy", "--no-ui-mcp-proxy", "--no-webui-mcp-proxy"}


def test_every_allowed_flag_is_in_the_pinned_help_or_documented_as_absent() -> None:
    assert sorted(set(ALLOWED) - FLAGS - set(OTHER_RELEASES)) == []
    assert sorted(set(OTHER_RELEASES) & FLAGS) == []           # documented as absent, yet there: fix the note


def test_the_pinned_help_warns_about_exactly_the_agent_tools_and_mcp_flags_and_none_is_allowed() -> None:
    assert WARNED == EXPECTED_WARNED
    assert not set(ALLOWED) & WARNED


def test_no_flag_is_both_allowed_and_rendered_by_the_supervisor_and_each_is_in_one_group() -> None:
    assert not set(ALLOWED) & set(RESERVED)
    every = [flag for flags in GROUPS.values() for flag in flags]
    assert len(every) == len(set(every)) == len(ALLOWED)


def test_each_help_entry_is_allowed_in_every_spelling_or_in_none() -> None:
    """`-ub, --ubatch-size` both or neither; only --no-slots is allowed without its other half (--slots)."""
    partial = []
    for line in HELP.splitlines():
        if line.startswith("-") and not line.startswith("---"):
            spellings = parse_help_flags(line)
            allowed = spellings & set(ALLOWED)
            if allowed and allowed != spellings:
                partial.append(sorted(allowed))
    assert partial == [["--no-slots"]]
