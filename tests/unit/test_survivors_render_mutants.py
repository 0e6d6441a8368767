"""Mutants of render.py that survived `make mutate` (docs/TESTING.md): what render hands the loop and
the gateway besides the container (name, aliases, lifecycle, idle TTL, queue, probe failures, the
backoff cap, what the model counts against the budgets and how that was found), the profile's CPU
set and GPU request, and the API key file host_files resolved."""

from __future__ import annotations

from supervisor.core.spec import GpuRequest, LoadPolicy, Mount
from supervisor.artifacts.gguf import GgufFacts
from supervisor.manifest import load_text
from supervisor.manifest.loader import Origin
from supervisor.render.memory import OVERHEAD_BYTES, OVERHEAD_FRACTION
from supervisor.render.argv import check_extra_args
from supervisor.render.desired import render_all

from . import test_render
from .test_render import GPU_HOST, HOST, LOCK

SHA = "ef" * 32
FACTS = GgufFacts("llama", n_layer=4, n_embd=256, n_head=4, n_head_kv=2, key_length=64, value_length=64,
                  context_length=8192)


def text(*, server: str = "", body: str = "", profile: str = "auto") -> str:
    return (f"kind: model\nname: m\nprofile: {profile}\nsource: {{path: /m/m.gguf, sha256: {SHA}}}\n"
            f"server:\n  port: 8081\n  ctx_size: 1024\n{server}{body}")


def render_one(manifests: str, **kw: object):  # type: ignore[no-untyped-def]
    desired, problems = render_all(load_text(manifests, name="m.yaml"), LOCK, kw.pop("host", HOST),  # type: ignore[arg-type]
                                   file_sizes={"m": 100 << 20}, **kw)  # type: ignore[arg-type]
    assert problems == []
    return desired["m"]


def test_the_gateway_and_lifecycle_settings_reach_the_desired_model() -> None:
    m = render_one(text(body="aliases: [x, y]\nlifecycle: on-demand\nidle_ttl: 90\nmax_queue: 7\n"
                             "health: {failures: 4}\nrestart: {backoff_initial: 2, backoff_max: 30}\n"))
    assert m.name == "m"
    s = m.serving
    assert (s.aliases, s.lifecycle, s.idle_ttl_s, s.max_queue) == (("x", "y"), LoadPolicy.ON_DEMAND, 90.0, 7)
    assert m.health.failures == 4 and m.restart.backoff_max_s == 30.0


def test_a_memory_limit_is_what_the_model_counts_and_says_so() -> None:
    m = render_one(text(body="resources: {memory: 1g}\n"))
    assert (m.serving.memory_bytes, m.serving.memory_basis) == (1 << 30, "limit")
    assert m.serving.gpu_memory_bytes == 0, "a CPU model counts no GPU memory"


def test_the_cache_types_shape_the_kv_part_of_the_estimate() -> None:
    f16 = render_one(text(), facts={"m": FACTS}).serving
    q8 = render_one(text(server="  cache_type_k: q8_0\n  cache_type_v: q4_0\n"), facts={"m": FACTS}).serving
    per_token_f16 = 4 * 2 * (64 * 2.0 + 64 * 2.0)
    per_token_q = 4 * 2 * (64 * 34 / 32 + 64 * 18 / 32)
    base = int(100 * 2**20 + OVERHEAD_BYTES + OVERHEAD_FRACTION * 100 * 2**20)
    assert f16.memory_bytes == base + int(1024 * per_token_f16)
    assert q8.memory_bytes == base + int(1024 * per_token_q)
    assert "KV 2 MiB" in f16.memory_basis


def test_a_cuda_profile_without_gpu_settings_asks_for_every_nvidia_gpu_and_counts_gpu_memory() -> None:
    profile = "---\nkind: profile\nname: g\nvariant: cuda\ncpuset: 0-1\n"
    m = render_one(text(profile="g") + profile, host=GPU_HOST)
    assert m.spec.gpu == GpuRequest("nvidia") and m.spec.cpuset == "0-1", "the profile's CPU set, the model sets none"
    assert m.serving.gpu_memory_bytes == m.serving.memory_bytes > 0


def test_the_model_cpuset_wins_over_the_profiles() -> None:
    profile = "---\nkind: profile\nname: p\nvariant: cpu-avx2\ncpuset: 0-1\n"
    assert render_one(text(profile="p", body="resources: {cpuset: '1'}\n") + profile).spec.cpuset == "1"


def test_the_api_key_file_is_mounted_from_the_path_host_files_resolved() -> None:
    m = render_one(text(server="  api_key_file: /etc/llama/link\n"), key_paths={"m": "/etc/llama/real-key"})
    assert Mount("/etc/llama/real-key", "/run/secrets/api-key", True) in m.spec.mounts


def test_a_model_without_a_port_asks_the_engine_for_one() -> None:
    m = render_one(text().replace("  port: 8081\n", ""))
    assert m.spec.host_port == 0


def test_without_a_readable_header_the_basis_says_the_kv_cache_is_unknown() -> None:
    assert render_one(text()).serving.memory_basis.endswith("+ KV unknown (not a readable GGUF header) + overhead")


def test_every_bad_item_is_reported_a_delete_character_and_a_lone_dash_included() -> None:
    record = test_render.record("cpu-avx512")
    problems = check_extra_args(("a\x7fb", "-", "--bogus", "\x01"), record, Origin("m.yaml", 1))
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
        "extra_args item 0 is empty or holds a control character",
        "--bogus is not a flag of llama-server in image llama-supervisor/llama-server:cpu-avx512",
        "extra_args item 3 is empty or holds a control character",
    ]
