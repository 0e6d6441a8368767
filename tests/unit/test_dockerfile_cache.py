"""The Dockerfiles keep the classic builder's layer cache after a --no-cache build (issue 19).

The classic builder (what the docker SDK's `build` drives) finds a step in its cache by looking for an
image whose parent is the previous step's image and whose step is the same, and takes the newest of
them. Two stages that start FROM the same base with the same first step share that step's image in an
ordinary build; a --no-cache build (`verify --rebuild`, `make reproduce`) runs it once per stage and
leaves two such images, the newer one the later stage's. The next cached build then took the health
check stage's image as the start of the build stage, found no llama-server compile under it, and
compiled again (measured: a tiny copy of images/Dockerfile, build, no-cache build, build: every step
of the build stage after the first ran again; with the health check stage FROM the build stage, only
the last metadata step did). So no two stages of a Dockerfile may start FROM the same base with the
same step.
"""

from __future__ import annotations

import re

import pytest

from supervisor.artifacts import images

CONTINUED = re.compile(r"\\\s*\n")


def stages(text: str) -> list[tuple[str, list[str]]]:
    """(base, steps) of each stage: the FROM image (`AS name` left out) and the instructions after it,
    continuation lines joined and whitespace collapsed, comments and blank lines left out."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = CONTINUED.sub(" ", "\n".join(lines) + "\n")
    found: list[tuple[str, list[str]]] = []
    for line in joined.splitlines():
        step = " ".join(line.split())
        if not step:
            continue
        if step.upper().startswith("FROM "):
            found.append((step.split()[1], []))
        elif found:                            # ARGs before the first FROM are not steps
            found[-1][1].append(step)
    return found


def shared_first_steps(text: str) -> list[str]:
    """'BASE: STEP' for each base that two stages start from with the same first step."""
    seen: dict[tuple[str, str], int] = {}
    for base, steps in stages(text):
        key = (base, steps[0] if steps else "")
        seen[key] = seen.get(key, 0) + 1
    return [f"{base}: {step[:60]}" for (base, step), n in seen.items() if n > 1]


def test_the_checker_finds_two_stages_that_begin_alike_and_passes_stages_that_do_not() -> None:
    alike = ("ARG B=x\nFROM ${B} AS build\nARG V=1\nRUN make \\\n  all\n"
             "# the health check\nFROM ${B} AS hc\nARG V=1\nRUN cc hc.c\nFROM scratch\nCOPY --from=build /o /\n")
    assert shared_first_steps(alike) == ["${B}: ARG V=1"]
    apart = alike.replace("FROM ${B} AS hc", "FROM build AS hc")
    assert shared_first_steps(apart) == []
    assert [base for base, _ in stages(apart)] == ["${B}", "build", "scratch"]
    assert stages(apart)[0][1] == ["ARG V=1", "RUN make all"]


@pytest.mark.parametrize("name", ["Dockerfile", "cuda.Dockerfile"])
def test_no_two_stages_of_an_image_dockerfile_start_alike(name: str) -> None:
    text = (images.images_dir() / name).read_text()
    assert len(stages(text)) >= 3, f"{name}: expected the build, health check and runtime stages"
    assert shared_first_steps(text) == [], (
        f"images/{name}: these stages start from one base with the same step, so a --no-cache build "
        "leaves two cache candidates for it and the next cached build can compile again: start the later "
        "stage FROM the earlier one, or make its first step differ")

