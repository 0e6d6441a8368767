"""render: manifests + profile + lock + host -> DesiredModel, argv checked against the image's flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.artifacts import modelsrc
from supervisor import paths
from supervisor.core.spec import GpuRequest, Mount, RestartPolicy
from supervisor.errors import ManifestError
from supervisor.artifacts.hardware import GpuInfo, HostInfo
from supervisor.artifacts.lock import ImageLock, ImageRecord
from supervisor.manifest import load_dir, load_text
from supervisor.render.memory import default_start_timeout
from supervisor.render.desired import load_desired, render_all

FIXTURES = Path(__file__).parent.parent / "fixtures"
DEMO_SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
AVX512 = frozenset({"avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"})
HOST = HostInfo(cores=2, memory_bytes=8 << 30, arch="x86_64", cpu_flags=AVX512)
GPU_HOST = HostInfo(cores=8, memory_bytes=64 << 30, arch="x86_64", cpu_flags=AVX512,
                    gpus=(GpuInfo(0, "NVIDIA L4", 24 << 30),))
FLAGS = frozenset({
    "-h", "--help", "--version", "-m", "--model", "--host", "--port", "-c", "--ctx-size", "-np", "--parallel",
    "-b", "--batch-size", "-t", "--threads", "-fa", "--flash-attn", "-ctk", "--cache-type-k", "-ctv",
    "--cache-type-v", "--api-key", "--api-key-file", "--no-webui", "-ngl", "--n-gpu-layers", "--gpu-layers",
    "--jinja", "-n", "--n-predict", "--mlock", "--no-mmap", "--metrics", "--embeddings", "--embedding",
})


def record(variant: str, flags: frozenset[str] = FLAGS) -> ImageRecord:
    return ImageRecord(
        variant=variant, tag=f"llama-supervisor/llama-server:{variant}", image_id=f"sha256:{variant}-id",
        binary_sha256="b" * 64, version="version: 7000 (test)", build_number=7000, flags=flags,
        source_sha256="s" * 64, built_at="2025-01-01T00:00:00Z",
    )


LOCK = ImageLock({v: record(v) for v in ("cpu-generic", "cpu-avx2", "cpu-avx512", "cuda")})


@pytest.fixture(autouse=True)
def default_image_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests spell the default repository; a checkout's override must not leak in."""
    monkeypatch.delenv("LLAMA_SUPERVISOR_IMAGE_REPO", raising=False)


def test_image_repo_override_names_the_rendered_image(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LLAMA_SUPERVISOR_IMAGE_REPO", "elsewhere/llama-server")
    desired, problems = render_all(load_dir(FIXTURES / "valid"), LOCK, HOST, file_sizes={})
    assert problems == []
    assert desired["gemma"].spec.image == "elsewhere/llama-server:cpu-avx512"
    assert paths.image_repo() == "elsewhere/llama-server"


def test_valid_fixture_renders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path))
    d = FIXTURES / "valid"
    desired, problems = render_all(load_dir(d), LOCK, HOST, file_sizes={"gemma": 253_000_000})
    assert problems == []
    g = desired["gemma"]
    cache = str(modelsrc.cache_path(DEMO_SHA, "gemma-3-270m-q4_k_m.gguf"))
    assert g.spec.image == "llama-supervisor/llama-server:cpu-avx512"
    assert g.spec.image_id == "sha256:cpu-avx512-id"
    assert g.spec.argv == (
        "--model", "/models/gemma-3-270m-q4_k_m.gguf", "--host", "0.0.0.0", "--port", "8080",
        "--ctx-size", "2048", "--parallel", "1", "--batch-size", "512", "--threads", "2",
        "--flash-attn", "auto", "--cache-type-k", "f16", "--cache-type-v", "f16", "--no-webui",
    )
    assert g.spec.mounts == (Mount(cache, "/models/gemma-3-270m-q4_k_m.gguf", True),)
    assert (g.spec.host_ip, g.spec.host_port, g.spec.container_port) == ("127.0.0.1", 8081, 8080)
    assert g.spec.memory_bytes == 1 << 30 and g.spec.pids_limit == 256 and g.spec.nano_cpus is None
    assert g.spec.model_sha256 == DEMO_SHA and g.spec.gpu is None
    assert g.model_path == cache and g.source_file == f"{d}/models.yaml" and g.api_key_file is None
    assert g.health.start_timeout_s == pytest.approx(10 + 2.53 + 0.5)
    assert g.restart.policy is RestartPolicy.ALWAYS and g.restart.max_failures == 5

    s = desired["gemma-small"]
    assert s.spec.argv == (
        "--model", "/models/small.gguf", "--host", "0.0.0.0", "--port", "8080",
        "--ctx-size", "4096", "--parallel", "2", "--batch-size", "512", "--threads", "2",
        "--flash-attn", "on", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
        "--api-key-file", "/run/secrets/api-key", "--no-webui", "--jinja", "--n-predict", "128",
    )
    assert s.spec.mounts == (
        Mount("/srv/models/small.gguf", "/models/small.gguf", True),
        Mount("/etc/llama/key", "/run/secrets/api-key", True),
    )
    assert s.spec.host_ip == "0.0.0.0" and s.spec.host_port == 8082
    assert s.spec.memory_bytes == 512 << 20      # from the profile: the model sets none
    assert s.spec.nano_cpus == 1_500_000_000 and s.spec.pids_limit == 128
    assert s.health.start_timeout_s == 120
    assert s.restart.policy is RestartPolicy.ON_FAILURE and s.restart.max_failures == 3
    assert s.api_key_file == "/etc/llama/key"


def test_config_hash_is_stable_across_key_order() -> None:
    a, pa = render_all(load_dir(FIXTURES / "reordered_a"), LOCK, HOST, file_sizes={})
    b, pb = render_all(load_dir(FIXTURES / "reordered_b"), LOCK, HOST, file_sizes={})
    assert pa == pb == []
    assert a["gemma"].spec == b["gemma"].spec
    assert a["gemma"].spec.config_hash() == b["gemma"].spec.config_hash()
    c, _ = render_all(load_dir(FIXTURES / "reordered_a"), LOCK, HOST, file_sizes={"gemma": 10**9})
    assert c["gemma"].spec.config_hash() == a["gemma"].spec.config_hash()  # file size shapes health only


MODEL = """\
kind: model
name: m
profile: {profile}
source: {{path: /m/m.gguf, sha256: {sha}}}
server:
  port: 8081
  extra_args: {extra}
"""


def one(text: str, *, lock: ImageLock = LOCK, host: HostInfo = HOST) -> tuple[object, list[str]]:
    desired, problems = render_all(load_text(text, name="m.yaml"), lock, host, file_sizes={})
    return desired.get("m"), problems


def model(extra: str = "[]", profile: str = "auto", tail: str = "") -> str:
    return MODEL.format(extra=extra, profile=profile, sha="ef" * 32) + tail


def test_unknown_flag_names_the_closest() -> None:
    m, problems = one(model("[--jinja, --ctx-sise, 4096, --metrics]"))
    assert m is None
    assert problems == [
        "m.yaml:7: --ctx-sise is not a flag of llama-server in image llama-supervisor/llama-server:cpu-avx512"
        " (version: 7000 (test)) (fix: did you mean '--ctx-size'?)"
    ]


def test_a_flag_equals_value_item_is_refused_because_llama_server_would_not_start() -> None:
    m, problems = one(model("[--metrics=1]"))          # the real llama-server: 'invalid argument: --metrics=1'
    assert m is None and problems == [
        "m.yaml:7: '--metrics=1': llama-server takes no flag=value items and would not start"
        " (fix: give the value as the next item: --metrics, 1)"]


OFF_FLAGS = frozenset({"--no-agent", "-no-ag", "--no-ui-mcp-proxy", "--no-webui-mcp-proxy", "--cors-origins",
                       "--no-cors-credentials"})
RENDERED_OFF = ("--no-webui", "--no-agent", "--no-ui-mcp-proxy", "--cors-origins", "none", "--no-cors-credentials")


def test_risky_features_are_rendered_off_and_cors_is_strict_where_the_image_knows_the_flags() -> None:
    m, problems = one(model("[--jinja]"), lock=ImageLock({"cpu-avx512": record("cpu-avx512", FLAGS | OFF_FLAGS)}))
    assert problems == [] and m is not None
    argv = m.spec.argv  # type: ignore[attr-defined]
    webui = argv.index("--no-webui")
    assert argv[webui:webui + len(RENDERED_OFF)] == RENDERED_OFF
    assert argv[-1] == "--jinja"                        # extra_args come last and cannot undo them (RESERVED)
    only_old = FLAGS | {"--no-webui-mcp-proxy", "-no-ag"}   # other spellings are rendered when those are all it has
    m, _ = one(model(), lock=ImageLock({"cpu-avx512": record("cpu-avx512", only_old)}))
    assert m.spec.argv[-3:] == ("--no-webui", "-no-ag", "--no-webui-mcp-proxy")  # type: ignore[attr-defined]
    m, _ = one(model())                                 # an image without them: nothing rendered, nothing refused
    assert not set(m.spec.argv) & (OFF_FLAGS | {"none"})  # type: ignore[attr-defined]


def test_mlock_suggests_load_mode_when_the_image_has_it() -> None:
    flags = (FLAGS - {"--mlock", "--no-mmap"}) | {"--load-mode"}   # as in llama.cpp builds since --load-mode
    lock = ImageLock({"cpu-avx512": record("cpu-avx512", flags)})
    _, problems = one(model("\n    - --mlock\n    - --no-mmap"), lock=lock)
    assert problems == [
        "m.yaml:8: --mlock is not a flag of llama-server in image llama-supervisor/llama-server:cpu-avx512"
        " (version: 7000 (test)) (fix: use '--load-mode mlock')",
        "m.yaml:9: --no-mmap is not a flag of llama-server in image llama-supervisor/llama-server:cpu-avx512"
        " (version: 7000 (test)) (fix: use '--load-mode none')",
    ]
    m, problems = one(model("[--mlock]"))          # an image that knows --mlock takes it as is
    assert problems == [] and m is not None


def test_other_spelling_is_suggested() -> None:
    lock = ImageLock({"cpu-avx512": record("cpu-avx512", FLAGS - {"--embeddings"})})
    _, problems = one(model("[--embeddings]"), lock=lock)
    assert problems[0].endswith("(fix: use '--embedding')")


def test_flags_the_supervisor_owns_are_refused_in_extra_args() -> None:
    _, problems = one(model("[--port, 9000, --api-key, secret]"))
    assert problems == [
        "m.yaml:7: extra_args sets --port, which the supervisor renders itself (fix: remove it and use"
        " server.port)",
        "m.yaml:7: extra_args sets --api-key, which the supervisor renders itself (fix: remove it and use"
        " server.api_key_file (a key on the command line shows in docker inspect))",
    ]


def test_short_spellings_used_when_the_image_only_has_those() -> None:
    flags = frozenset({"-m", "--host", "--port", "-c", "-np", "-b", "-t", "-fa", "-ctk", "-ctv"})
    m, problems = one(model(), lock=ImageLock({"cpu-avx512": record("cpu-avx512", flags)}))
    assert problems == []
    assert m.spec.argv[:2] == ("-m", "/models/m.gguf")  # type: ignore[attr-defined]
    assert "--no-webui" not in m.spec.argv  # type: ignore[attr-defined]


def test_a_missing_core_flag_is_a_problem() -> None:
    flags = FLAGS - {"-c", "--ctx-size"}
    _, problems = one(model(), lock=ImageLock({"cpu-avx512": record("cpu-avx512", flags)}))
    assert problems == [
        "m.yaml:5: image llama-supervisor/llama-server:cpu-avx512 (version: 7000 (test)) has none of"
        " --ctx-size, -c, needed for server.ctx_size (fix: rebuild the image with"
        " 'llama-supervisorctl build cpu-avx512')"
    ]


def test_variant_missing_from_lock() -> None:
    _, problems = one(model(), lock=ImageLock())
    assert problems == [
        "m.yaml:3: model 'm' needs image variant cpu-avx512, which is not in the image lock"
        " (fix: run 'llama-supervisorctl build cpu-avx512')"
    ]


def test_profile_variant_this_cpu_cannot_run() -> None:
    host = HostInfo(cores=2, memory_bytes=1 << 30, arch="x86_64", cpu_flags=frozenset({"sse2"}))
    text = model(profile="fast") + "---\nkind: profile\nname: fast\nvariant: cpu-avx512\n"
    _, problems = one(text, host=host)
    assert problems == [
        "m.yaml:3: model 'm' needs image variant cpu-avx512, but the CPU lacks avx512bw, avx512cd, avx512dq,"
        " avx512f, avx512vl (fix: use profile auto or a profile with variant: auto)"
    ]


def test_gpu_profile_and_auto_on_a_gpu_host() -> None:
    text = model(profile="gpu") + (
        "---\nkind: profile\nname: gpu\ngpu: {device_ids: [0], layers: 40}\nthreads: 3\ncpuset: 0-3\n"
    )
    m, problems = one(text, host=GPU_HOST)
    assert problems == []
    spec = m.spec  # type: ignore[attr-defined]
    assert spec.image == "llama-supervisor/llama-server:cuda"
    assert spec.gpu == GpuRequest("nvidia", device_ids=("0",))
    assert spec.argv[-2:] == ("--n-gpu-layers", "40")
    assert spec.cpuset == "0-3" and "3" == spec.argv[spec.argv.index("--threads") + 1]
    m, _ = one(model(), host=GPU_HOST)
    assert m.spec.gpu == GpuRequest("nvidia") and m.spec.argv[-2:] == ("--n-gpu-layers", "99")  # type: ignore


def test_cpu_profile_with_variant_auto_stays_on_cpu_on_a_gpu_host() -> None:
    text = model(profile="cpu") + "---\nkind: profile\nname: cpu\n"
    m, problems = one(text, host=GPU_HOST)
    assert problems == [] and m.spec.image.endswith(":cpu-avx512") and m.spec.gpu is None  # type: ignore


def test_gpu_profile_without_a_gpu() -> None:
    text = model(profile="gpu") + "---\nkind: profile\nname: gpu\nvariant: cuda\n"
    _, problems = one(text)
    assert problems == [
        "m.yaml:3: model 'm' needs image variant cuda, but no NVIDIA GPU was detected (install nvidia-ml-py"
        " if there is one) (fix: use profile auto or a profile with variant: auto)"
    ]


def test_a_broken_model_does_not_stop_the_others() -> None:
    text = model("[--bogus-flag]") + "---\n" + model().replace("name: m", "name: ok").replace("8081", "8082")
    desired, problems = render_all(load_text(text, name="m.yaml"), LOCK, HOST, file_sizes={})
    assert list(desired) == ["ok"] and len(problems) == 1


def test_default_start_timeout() -> None:
    assert default_start_timeout(0, 4096) == 11
    assert default_start_timeout(1_000_000_000, 8192) == 22
    assert default_start_timeout(0, 0) == 18          # ctx_size 0 counts as 32768
    assert default_start_timeout(10**12, 4096) == 600


def test_default_start_timeout_under_emulation_is_twenty_times_the_native_budget_within_the_cap() -> None:
    assert default_start_timeout(0, 4096, emulated=True) == 220
    assert default_start_timeout(253_000_000, 512, emulated=True) == pytest.approx(20 * (10 + 2.53 + 0.125))
    assert default_start_timeout(10**9, 8192, emulated=True) == 440
    assert default_start_timeout(10**12, 4096, emulated=True) == 600


def test_an_arm64_model_gets_the_emulated_start_budget_only_where_it_runs_under_emulation() -> None:
    """The demo model loads in 16.7 s through qemu-user here against its native 12.7 s budget: an emulated
    variant with the native default failed every start (not healthy after 12.6561s, then FATAL)."""
    lock = ImageLock({**LOCK.images, "arm64": record("arm64")})
    text = model(profile="arm") + "---\nkind: profile\nname: arm\nvariant: arm64\n"
    x86 = HostInfo(cores=2, memory_bytes=8 << 30, arch="x86_64", cpu_flags=AVX512, emulates=frozenset({"aarch64"}))
    arm = HostInfo(cores=2, memory_bytes=8 << 30, arch="aarch64", cpu_flags=frozenset({"asimd", "neon"}))
    for host, budget in ((x86, 220.0), (arm, 11.0)):
        m, problems = one(text, lock=lock, host=host)
        assert problems == [] and m.spec.image.endswith(":arm64"), problems  # type: ignore[attr-defined]
        assert m.health.start_timeout_s == budget, host.arch  # type: ignore[attr-defined]
    native, _ = one(model(), lock=lock, host=x86)
    assert native.health.start_timeout_s == 11  # type: ignore[attr-defined]
    profile = "---\nkind: profile\nname: arm\nvariant: arm64\n"
    explicit, problems = one(model(profile="arm", tail="health: {start_timeout: 30}\n") + profile, lock=lock, host=x86)
    assert problems == [] and explicit.health.start_timeout_s == 30  # type: ignore[attr-defined]


def test_load_desired_stats_the_file_and_propagates_manifest_errors(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"\0" * 1000)
    (tmp_path / "m.yaml").write_text(model().replace("/m/m.gguf", str(gguf)))
    desired, problems = load_desired(tmp_path, LOCK, HOST)
    assert problems == []
    assert desired["m"].health.start_timeout_s == pytest.approx(10 + 1000 / 1e8 + 1)
    assert desired["m"].model_path == str(gguf)
    (tmp_path / "bad.yaml").write_text("kind: model\n")
    with pytest.raises(ManifestError):
        load_desired(tmp_path, LOCK, HOST)


def test_the_default_manifests_render_the_demo_model() -> None:
    root = Path(__file__).parent.parent.parent
    desired, problems = render_all(load_dir(root / "manifests"), LOCK, HOST, file_sizes={})
    assert problems == []
    gemma = desired["gemma"].spec
    assert (gemma.host_ip, gemma.host_port, gemma.memory_bytes) == ("127.0.0.1", 8081, 1 << 30)
    assert gemma.model_sha256 == DEMO_SHA
    assert gemma.argv[gemma.argv.index("--ctx-size") + 1] == "2048"
