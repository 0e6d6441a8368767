"""scripts/gpu-check's pure parts: the manifests it writes load, and its offload check reads the real log.

The script itself needs an NVIDIA GPU (it ran on a lent H200: docs/GPU.md); these keep what it
feeds the daemon and what it reads back from drifting from the manifest schema and llama.cpp's log.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

from supervisor.manifest import load_dir
from supervisor.render.allowed_flags import ALLOWED

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(ROOT / "scripts" / "gpu-check"))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_its_manifests_load_with_full_and_no_offload(tmp_path: Path) -> None:
    gc = _gpu_check()
    model = tmp_path / "m.gguf"
    (tmp_path / "gpu.yaml").write_text(gc.manifest("gpucheck", 18481, model, gc.DEMO_SHA256, 99))
    (tmp_path / "cpu.yaml").write_text(gc.manifest("cpucheck", 18482, model, gc.DEMO_SHA256, 0))

    loaded = load_dir(tmp_path)

    assert sorted(loaded.models) == ["cpucheck", "gpucheck"]
    gpu = loaded.profiles[loaded.models["gpucheck"].profile]
    cpu = loaded.profiles[loaded.models["cpucheck"].profile]
    assert (gpu.variant, gpu.gpu.layers, cpu.gpu.layers) == ("cuda", 99, 0)
    args = list(loaded.models["gpucheck"].server.extra_args)
    assert args == ["--log-verbosity", "4"]            # the offload line is logged at verbosity 4
    assert args[0] in ALLOWED                          # the daemon would refuse a flag off the allowlist


def test_offload_check_reads_the_line_the_h200_logged() -> None:
    gc = _gpu_check()
    log = (ROOT / "docs" / "gpu-runs" / "2026-11-29-h200" / "gpucheck-log-excerpt.txt").read_text()

    m = gc.OFFLOAD.search(log)

    assert m is not None and (m.group(1), m.group(2)) == ("19", "19")
    assert gc.OFFLOAD.search("load_tensors: offloaded 12/19 layers to GPU").groups() == ("12", "19")
