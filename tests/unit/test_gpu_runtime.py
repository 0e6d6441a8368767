"""A GPU profile on an engine without the NVIDIA container runtime: refused before the create, and at
validate, with the fix; never the engine's 'could not select device driver' retried forever."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from supervisor.artifacts import gpu_runtime
from supervisor.cli.cmd_manifests import gpu_problems
from supervisor.core.spec import GpuRequest
from supervisor.errors import GpuUnavailable, RuntimeUnavailable
from supervisor.manifest import load_dir
from supervisor.runtime.docker.verifier import LockVerifier

from tests.unit.helpers import desired

ROOT = Path(__file__).resolve().parents[2]
RUNC_ONLY = {"Runtimes": {"runc": {"path": "runc"}, "io.containerd.runc.v2": {"path": "runc"}}}
WITH_NVIDIA = {"Runtimes": {**RUNC_ONLY["Runtimes"], "nvidia": {"path": "nvidia-container-runtime"}}}


class FakeEngine:
    """`docker info` only; counts the calls."""

    def __init__(self, info: dict[str, Any] | Exception) -> None:
        self._info = info
        self.calls = 0
        self.api = object()           # the image probe keeps it; no test here reaches it

    def info(self) -> dict[str, Any]:
        self.calls += 1
        if isinstance(self._info, Exception):
            raise self._info
        return self._info


def test_missing_names_the_runtimes_and_the_fix() -> None:
    why = gpu_runtime.missing(RUNC_ONLY, hook_on_path=False)
    assert "lists runtimes: io.containerd.runc.v2, runc" in why and "nvidia-ctk runtime configure" in why
    assert gpu_runtime.missing(WITH_NVIDIA, hook_on_path=False) == ""
    assert gpu_runtime.missing(RUNC_ONLY, hook_on_path=True) == ""      # the engine's own --gpus support
    assert "runtimes: none" in gpu_runtime.missing({}, hook_on_path=False)


def test_the_daemon_refuses_a_gpu_model_before_the_create_and_leaves_cpu_models_alone(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))           # no nvidia-container-runtime-hook here
    engine = FakeEngine(RUNC_ONLY)
    verifier = LockVerifier(engine, tmp_path / "images.lock.json")
    gpu = desired("qwen-gpu")
    gpu = replace(gpu, spec=replace(gpu.spec, gpu=GpuRequest("nvidia", device_ids=("0",))))
    with pytest.raises(GpuUnavailable, match="qwen-gpu: its profile asks for NVIDIA GPUs.*nvidia-ctk"):
        verifier.check_image(gpu)
    assert GpuUnavailable.exit_code == 3 and not GpuUnavailable.retryable
    with pytest.raises(Exception, match="not in"):      # a CPU model goes on to the lock check, no info call
        verifier.check_image(desired("cpu"))
    assert engine.calls == 1


def test_validate_reports_each_gpu_model_at_its_profile_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    manifests = load_dir(ROOT / "tests" / "fixtures" / "export" / "gpu")
    names = sorted(manifests.models)
    problems = gpu_problems(manifests, names, FakeEngine(RUNC_ONLY))
    assert len(problems) == len(names)
    for name, problem in zip(names, problems, strict=True):
        assert f"model '{name}': its profile asks for NVIDIA GPUs, but this Docker engine has no NVIDIA" in problem
        assert problem.split(":")[0].endswith(".yaml") and problem.split(":")[1].isdigit()
    assert gpu_problems(manifests, names, FakeEngine(WITH_NVIDIA)) == []
    assert gpu_problems(manifests, [], FakeEngine(RUNC_ONLY)) == []


def test_validate_notes_an_unreachable_engine_without_failing(capsys: pytest.CaptureFixture[str]) -> None:
    manifests = load_dir(ROOT / "tests" / "fixtures" / "export" / "gpu")
    dead = FakeEngine(RuntimeUnavailable("engine unreachable"))
    assert gpu_problems(manifests, sorted(manifests.models), dead) == []
    assert "GPU support of the Docker engine not checked" in capsys.readouterr().err
