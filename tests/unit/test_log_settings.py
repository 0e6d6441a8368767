"""Bounded container logs: the manifest's `logs:` section shapes the container (and its config hash)."""

from __future__ import annotations

import pytest

from supervisor.errors import ManifestError
from supervisor.runtime.docker.runtime import host_config_kwargs

from .test_render import model, one


def test_defaults_rotate_at_10_MiB_keeping_3_files() -> None:
    m, problems = one(model())
    assert problems == [] and m is not None
    spec = m.spec                                                    # type: ignore[attr-defined]
    assert (spec.log_max_bytes, spec.log_max_files) == (10 << 20, 3)
    lc = host_config_kwargs(spec)["log_config"]
    assert lc["Type"] == "json-file" and lc["Config"] == {"max-size": str(10 << 20), "max-file": "3"}


def test_the_logs_section_sets_rotation_and_changes_the_config_hash() -> None:
    base, _ = one(model())
    small, problems = one(model(tail="logs:\n  max_size: 1k\n  max_files: 2\n"))
    assert problems == [] and small is not None and base is not None
    assert (small.spec.log_max_bytes, small.spec.log_max_files) == (1024, 2)   # type: ignore[attr-defined]
    assert small.spec.config_hash() != base.spec.config_hash()              # type: ignore[attr-defined]


@pytest.mark.parametrize("section", ["logs:\n  max_size: 10\n", "logs:\n  max_files: 0\n",
                                     "logs:\n  max_size: 5g\n", "logs:\n  keep: 3\n"])
def test_unbounded_or_odd_log_settings_are_refused_with_file_and_line(section: str) -> None:
    with pytest.raises(ManifestError) as e:
        one(model(tail=section))
    assert "m.yaml:" in str(e.value)
