"""The README as a new user reads it (issue 20): each command listed once, a first request whose answer
reads as working with the demo base model, and curl examples the gateway accepts."""

from __future__ import annotations

import re
from pathlib import Path

from supervisor.cli.ctl import COMMAND_MODULES

README = (Path(__file__).parent.parent.parent / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def listed_commands(block: str) -> list[str]:
    """`llama-supervisorctl a [X] | b | c|d NAME  # comment` -> [a, b, c, d]: alternatives are ' | ' or a|b."""
    names = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("llama-supervisorctl "):
            continue
        for segment in line.removeprefix("llama-supervisorctl ").split(" | "):
            names += segment.split()[0].split("|")
    return names


def test_operating_it_lists_every_command_once() -> None:
    listed = listed_commands(code_blocks(section("Operating it"), "sh")[0])
    assert sorted(n for n in set(listed) if listed.count(n) > 1) == []
    every = {c for commands in COMMAND_MODULES.values() for c in commands}
    assert set(listed) == every - {"schema"}


def test_the_first_request_is_a_completion_and_the_demo_model_is_said_to_be_a_base_model() -> None:
    quick = section("Quick start")
    first = next(b for b in code_blocks(quick, "sh") if "curl" in b)
    assert "/v1/completions" in first and '"prompt": "The capital of France is"' in first
    assert "not instruction tuned" in quick and "Gemma 3 270M" in quick and "Q4_K_M" in quick
    assert "/v1/chat/completions" in quick and '"model": "my-chat"' in quick     # chat: a model of your own


def test_every_curl_example_sends_json_as_json() -> None:
    curls = [c for c in re.findall(r"curl (?:[^\n]*\\\n)*[^\n]*", README) if " -d " in c]
    assert len(curls) >= 2
    assert [c for c in curls if "-H 'Content-Type: application/json'" not in c] == []
