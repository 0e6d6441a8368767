"""`render compose|swarm|kubernetes`: golden files, determinism, offline schema validation, the mapping.

Goldens: tests/golden/<set>/<file> for the repository's manifests/ and the GPU
fixture (tests/fixtures/export/gpu). After an intended change, regenerate them
with `UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_export_render.py` and
read the diff.

Kubernetes objects are checked by kubernetes-validate (strict: unknown fields
are errors) against the schemas of pinned Kubernetes versions. Compose
files are checked against the Compose Specification JSON schema that the
PyPI package docker-compose 1.29.2 ships (compose/config/compose_spec.json,
vendored as tests/fixtures/export/compose_spec.json; see the README there).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from supervisor import export
from supervisor.cli import cmd_export
from supervisor.export import compose, kubernetes, swarm
from supervisor.artifacts.hardware import GpuInfo, HostInfo
from supervisor.artifacts.lock import ImageLock, ImageRecord, write_lock
from supervisor.manifest import load_dir

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "export"
GOLDEN = ROOT / "tests" / "golden"
SETS = {"manifests": ROOT / "manifests", "gpu": FIXTURES / "gpu"}
K8S_VERSIONS = ("1.30.0", "1.37.0")        # the oldest and newest schemas this render is checked against
AVX512 = frozenset({"avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"})
HOST = HostInfo(cores=16, memory_bytes=64 << 30, arch="x86_64", cpu_flags=AVX512,
                gpus=(GpuInfo(0, "NVIDIA L4", 24 << 30), GpuInfo(1, "NVIDIA L4", 24 << 30)))
CPU_HOST = HostInfo(cores=16, memory_bytes=64 << 30, arch="x86_64", cpu_flags=AVX512)
FLAGS = frozenset({
    "--model", "--host", "--port", "--ctx-size", "--parallel", "--batch-size", "--threads", "--flash-attn",
    "--cache-type-k", "--cache-type-v", "--api-key-file", "--no-webui", "--n-gpu-layers", "--jinja",
    "--no-agent", "--no-ui-mcp-proxy", "--cors-origins", "--no-cors-credentials",   # as llama.cpp 11434 has them
})
FILE_SIZES = {"gemma": 253_000_000, "qwen-gpu": 4_680_000_000, "tiny": 253_000_000}
DIGEST = "sha256:" + "d" * 64


def record(variant: str, n: int) -> ImageRecord:
    return ImageRecord(
        variant=variant, tag=f"llama-supervisor/llama-server:{variant}", image_id="sha256:" + f"{n}" * 64,
        binary_sha256="b" * 64, version="version: 11434 (pypi-sdist)", build_number=11434, flags=FLAGS,
        source_sha256="s" * 64, built_at="2026-01-01T00:00:00+00:00",
    )


LOCK = ImageLock({v: record(v, i) for i, v in enumerate(("cpu-avx2", "cpu-avx512", "cuda"), start=1)})


@pytest.fixture(autouse=True)
def fixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renders name host paths of the model cache and the image repository: fix both."""
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", "/var/cache/llama-supervisor")
    monkeypatch.delenv("LLAMA_SUPERVISOR_IMAGE_REPO", raising=False)


def models_of(directory: Path) -> list[export.ExportModel]:
    """The GPU fixture on a host with two GPUs; manifests/ (profile auto) on a CPU host, as the demo runs."""
    host = HOST if directory != SETS["manifests"] else CPU_HOST
    models, problems = export.collect(load_dir(directory), LOCK, host, file_sizes=FILE_SIZES)
    assert problems == []
    return models


def options(**kw: object) -> export.Options:
    return export.Options(node_memory_bytes=HOST.memory_bytes, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", export.TARGETS)
@pytest.mark.parametrize("name", sorted(SETS))
def test_render_matches_golden(name: str, target: str) -> None:
    opts = options(image_refs={"cuda": f"llama-supervisor/llama-server@{DIGEST}"}) if name == "gpu" else options()
    text = export.render_target(target, models_of(SETS[name]), opts)
    golden = GOLDEN / name / export.FILENAMES[target]
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"render differs from {golden} (UPDATE_GOLDEN=1 rewrites it; read the diff)"


@pytest.mark.parametrize("target", export.TARGETS)
def test_render_is_deterministic_and_a_change_shows_as_that_models_hash(target: str, tmp_path: Path) -> None:
    first = export.render_target(target, models_of(SETS["gpu"]), options())
    assert export.render_target(target, models_of(SETS["gpu"]), options()) == first

    changed = tmp_path / "gpu"
    shutil.copytree(SETS["gpu"], changed)
    text = (changed / "models.yaml").read_text().replace("ctx_size: 512", "ctx_size: 1024")
    (changed / "models.yaml").write_text(text)
    before, after = models_of(SETS["gpu"]), models_of(changed)
    second = export.render_target(target, after, options())
    tiny_before = next(m for m in before if m.name == "tiny").config_hash
    tiny_after = next(m for m in after if m.name == "tiny").config_hash
    qwen = next(m for m in before if m.name == "qwen-gpu").config_hash
    assert tiny_before != tiny_after
    assert tiny_before in first and tiny_before not in second and tiny_after in second
    assert second.count(qwen) == first.count(qwen) > 0          # the other model is untouched


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(SETS))
def test_kubernetes_documents_pass_strict_schema_validation(name: str, version: str) -> None:
    docs = list(yaml.safe_load_all(export.render_target("kubernetes", models_of(SETS[name]), options())))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"] * len(models_of(SETS[name]))
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The check above can fail: a field Kubernetes does not have is an error."""
    doc = kubernetes.documents(models_of(SETS["manifests"]), options())[0]
    doc["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


def compose_validator() -> jsonschema.Draft201909Validator:
    schema = json.loads((FIXTURES / "compose_spec.json").read_text())
    return jsonschema.Draft201909Validator(schema)


@pytest.mark.parametrize("name", sorted(SETS))
def test_compose_file_follows_the_compose_spec(name: str) -> None:
    """Stack files use deploy.resources.limits.pids, newer than this schema: the docker CLI's own
    loader checks them instead (tests/integration/test_swarm.py, `docker stack config`)."""
    doc = yaml.safe_load(export.render_target("compose", models_of(SETS[name]), options()))
    errors = sorted(compose_validator().iter_errors(doc), key=lambda e: list(e.path))
    assert errors == [], [f"{list(e.path)}: {e.message}" for e in errors]


def test_compose_schema_rejects_a_misspelt_key() -> None:
    doc = compose.document(models_of(SETS["manifests"]), options())
    doc["services"]["gemma"]["read_onyl"] = True
    assert list(compose_validator().iter_errors(doc))


def test_compose_service_is_the_daemons_container() -> None:
    (gemma,) = models_of(SETS["manifests"])
    svc = compose.document([gemma], options())["services"]["gemma"]
    spec = gemma.desired.spec
    assert svc["command"] == list(spec.argv)
    assert svc["ports"] == ["127.0.0.1:8081:8080"]
    assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    assert svc["security_opt"] == ["no-new-privileges:true"] and svc["user"] == "65532:65532"
    assert svc["mem_limit"] == svc["memswap_limit"] == "1g" and svc["pids_limit"] == 256
    assert svc["cpu_shares"] == 512 and svc["restart"] == "on-failure:5"
    assert svc["healthcheck"]["test"] == ["CMD", "/usr/local/bin/llama-healthcheck", "8080"]
    assert svc["volumes"] == [{"type": "bind", "source": gemma.desired.model_path,
                               "target": "/models/gemma-3-270m-q4_k_m.gguf", "read_only": True}]
    assert svc["labels"]["io.llama-supervisor.config-hash"] == spec.config_hash()
    assert "io.llama-supervisor.managed" not in svc["labels"]        # the daemon must not adopt these


def test_swarm_service_maps_restart_update_and_ports() -> None:
    models = models_of(SETS["gpu"])
    doc = swarm.document(models, options())
    qwen, tiny = doc["services"]["qwen-gpu"], doc["services"]["tiny"]
    assert qwen["ports"] == [{"target": 8080, "published": 8090, "protocol": "tcp", "mode": "host"}]
    assert qwen["deploy"]["restart_policy"] == {"condition": "on-failure", "delay": "2s", "max_attempts": 4,
                                                "window": "300s"}
    assert tiny["deploy"]["restart_policy"]["condition"] == "none"
    assert qwen["deploy"]["resources"]["reservations"]["generic_resources"] == [
        {"discrete_resource_spec": {"kind": "NVIDIA-GPU", "value": 2}}]
    assert qwen["secrets"][0]["target"] == "api-key" and doc["secrets"] == {
        "qwen-gpu-api-key": {"file": "/etc/llama-supervisor/keys/qwen"}}
    assert qwen["networks"] != tiny["networks"]                     # models cannot reach each other
    # one node: the old task holds the host port, so the new one cannot start first
    assert qwen["deploy"]["update_config"]["order"] == "stop-first"
    # start-first with a second node and when every limit is known and two copies fit (qwen: 8g from its profile)
    two = swarm.document(models, export.Options(node_memory_bytes=64 << 30, swarm_nodes=2))
    assert two["services"]["qwen-gpu"]["deploy"]["update_config"]["order"] == "start-first"
    small = swarm.document(models, export.Options(node_memory_bytes=9 << 30, swarm_nodes=2))
    assert small["services"]["qwen-gpu"]["deploy"]["update_config"]["order"] == "stop-first"


def test_kubernetes_mapping() -> None:
    models = models_of(SETS["gpu"])
    refs = {"cuda": f"llama-supervisor/llama-server@{DIGEST}"}
    docs = kubernetes.documents(models, options(image_refs=refs, namespace="llm"))
    qwen_dep, qwen_svc, tiny_dep, _ = docs
    assert all(d["metadata"]["namespace"] == "llm" for d in docs)
    pod = qwen_dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == f"llama-supervisor/llama-server@{DIGEST}"
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "privileged": False,
                                    "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 300
    assert c["livenessProbe"]["failureThreshold"] == 3 and c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["limits"] == {"cpu": "4000m", "memory": "8Gi", "nvidia.com/gpu": 2}
    assert {"name": "model", "hostPath": {"path": "/srv/models/qwen2.5-7b-instruct-q4_k_m.gguf",
                                          "type": "File"}} in pod["volumes"]
    assert qwen_svc["spec"]["type"] == "ClusterIP" and qwen_svc["spec"]["ports"][0]["port"] == 8090
    tiny_pod = tiny_dep["spec"]["template"]["spec"]
    (tiny_c,) = tiny_pod["containers"]
    assert tiny_c["image"] == "llama-supervisor/llama-server:cpu-avx2"       # no ref given: the local tag
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "llama-supervisor-models",
                                                       "readOnly": True}} in tiny_pod["volumes"]
    assert tiny_c["volumeMounts"][0]["subPath"] == (
        "models/a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818/gemma-3-270m-q4_k_m.gguf")
    annotations = tiny_dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["llama-supervisor.io/config-hash"] == models[1].config_hash


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    lock = tmp_path / "images.lock.json"
    write_lock(lock, LOCK)
    monkeypatch.setenv("LLAMA_SUPERVISOR_LOCK", str(lock))
    return tmp_path


def test_cli_render_writes_the_file(cli_env: Path) -> None:
    import click

    cli = click.Group()
    cmd_export.register(cli)
    out = cli_env / "out"
    result = CliRunner().invoke(cli, ["render", "kubernetes", "--manifests", str(SETS["manifests"]),
                                      "--out", str(out), "--namespace", "llm"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all((out / "kubernetes.yaml").read_text()))
    assert {d["metadata"]["namespace"] for d in docs} == {"llm"}


def test_cli_render_errors_name_the_fix(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import click

    cli = click.Group()
    cmd_export.register(cli)
    bad = CliRunner().invoke(cli, ["render", "kubernetes", "--manifests", str(SETS["manifests"]),
                                   "--image-ref", "cuda=llama-supervisor/llama-server:cuda"])
    assert bad.exit_code == 2 and "VARIANT=REPOSITORY@sha256:<64 hex digits>" in bad.output
    monkeypatch.setenv("LLAMA_SUPERVISOR_LOCK", str(cli_env / "absent.json"))
    result = CliRunner().invoke(cli, ["render", "compose", "--manifests", str(SETS["manifests"])])
    assert result.exit_code != 0
    assert "run 'llama-supervisorctl build auto' first" in str(result.exception or result.output)
