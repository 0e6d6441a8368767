"""The process runtime's pure parts: a rendered spec as argv/env/limits, the lock's binaries, cgroup set-up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from supervisor.artifacts import binaries
from supervisor.errors import BuildError, ConfigError, RuntimeUnavailable
from supervisor.artifacts.hardware import GpuInfo, HostInfo
from supervisor.artifacts.lock import BinaryRecord, ImageLock, read_lock, write_lock
from supervisor.manifest import load_text
from supervisor.render.desired import render_all
from supervisor.runtime.cgroup import Cgroups
from supervisor.runtime.choose import choose
from supervisor.runtime.process.records import proc_info, proof, ProcessRecord
from supervisor.runtime.process.spec import gpu_env, host_argv, parse_user, process_env, rlimits

from .test_render import FLAGS, HOST, LOCK, OFF_FLAGS, RENDERED_OFF, model, one

GPU_HOST = HostInfo(cores=16, memory_bytes=128 << 30, arch="x86_64", cpu_flags=frozenset({"avx2"}),
                    gpus=(GpuInfo(0, "NVIDIA H100", 80 << 30), GpuInfo(1, "NVIDIA H100", 80 << 30)))


def binary(variant: str = "cpu-avx512", sha: str = "d" * 64) -> BinaryRecord:
    return BinaryRecord(variant=variant, path=f"/state/bin/{variant}/llama-server", sha256=sha,
                        version="version: 7000 (test)", build_number=7000, flags=FLAGS, source_sha256="s" * 64,
                        built_at="2026-11-23T08:00:00+00:00", origin="image:sha256:abc")


def render_one(text: str, *, lock: ImageLock, host: HostInfo = HOST):  # -> DesiredModel
    desired, problems = render_all(load_text(text, name="m.yaml"), lock, host, file_sizes={})
    assert problems == []
    return desired["m"]


def test_container_paths_and_address_become_host_side() -> None:
    text = model("[--metrics]").replace("  port: 8081\n", "  port: 8081\n  api_key_file: /etc/llama/key\n")
    m = render_one(text, lock=LOCK.with_binary(binary()).for_process())
    argv = host_argv(m.spec)
    assert argv[0] == "llama-server"
    assert argv[argv.index("--model") + 1] == "/m/m.gguf"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"          # the manifest's host, not the container's 0.0.0.0
    assert argv[argv.index("--port") + 1] == "8081"               # the host port, not 8080
    assert argv[argv.index("--api-key-file") + 1] == "/etc/llama/key"
    assert argv[-1] == "--metrics"
    assert m.spec.image_id == "binary-sha256:" + "d" * 64        # the spec names the binary it runs


def test_equals_spelling_is_mapped_too() -> None:
    m = render_one(model(), lock=LOCK.with_binary(binary()).for_process())
    from dataclasses import replace

    spec = replace(m.spec, argv=("--model=/models/m.gguf", "--host=0.0.0.0", "--port=8080"),
                   mounts=(m.spec.mounts[0].__class__("/m/m.gguf", "/models/m.gguf"),))
    assert host_argv(spec)[1:] == ("--model=/m/m.gguf", "--host=127.0.0.1", "--port=8081")


def test_the_process_runtime_runs_the_same_off_switches_and_cors_and_checks_the_binarys_warnings() -> None:
    from dataclasses import replace

    b = replace(binary(), flags=FLAGS | OFF_FLAGS | {"--temp"}, warned_flags=frozenset({"--temp"}))
    lock = LOCK.with_binary(b).for_process()
    argv = host_argv(render_one(model(), lock=lock).spec)
    assert argv[argv.index("--no-webui"):][:len(RENDERED_OFF)] == RENDERED_OFF
    m, problems = one(model("[--temp, 0.7]"), lock=lock)    # the binary's --help warns: refused here too
    assert m is None and len(problems) == 1 and "warns against untrusted environments" in problems[0], problems


def test_gpu_profile_renders_layers_and_visible_devices() -> None:
    lock = ImageLock({"cuda": binary("cuda").as_image_record()})
    text = model(profile="gpu") + "---\nkind: profile\nname: gpu\ngpu: {device_ids: [1], layers: 40}\n"
    m = render_one(text, lock=lock, host=GPU_HOST)
    argv = host_argv(m.spec)
    assert argv[argv.index("--n-gpu-layers") + 1] == "40"
    env = process_env(m.spec, "/work/x")
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["HOME"] == env["TMPDIR"] == "/work/x" and "PYTHONPATH" not in env
    every = render_one(model(), lock=lock, host=GPU_HOST)     # auto on a GPU host: all GPUs, 99 layers
    assert gpu_env(every.spec) == {} and host_argv(every.spec)[-2:] == ("--n-gpu-layers", "99")
    cpu = render_one(model(), lock=LOCK.with_binary(binary()).for_process())
    assert gpu_env(cpu.spec) == {"CUDA_VISIBLE_DEVICES": ""}


def test_limits_memory_by_cgroup_else_address_space() -> None:
    m = render_one(model(tail="resources: {memory: 1g, pids: 64}\n"),
                   lock=LOCK.with_binary(binary()).for_process())
    names = {r.name: r for r in rlimits(m.spec, memory_by_cgroup=True)}
    assert names["RLIMIT_CORE"].hard == 0 and "RLIMIT_AS" not in names and "RLIMIT_NPROC" in names
    names = {r.name: r for r in rlimits(m.spec, memory_by_cgroup=False)}
    assert names["RLIMIT_AS"].soft == names["RLIMIT_AS"].hard == 1 << 30
    assert parse_user("65532:65532") == (65532, 65532) and parse_user("1000") == (1000, 1000)
    from dataclasses import replace

    from supervisor.core.spec import GpuRequest

    gpu = replace(m.spec, gpu=GpuRequest("nvidia"))
    assert "RLIMIT_AS" not in {r.name for r in rlimits(gpu, memory_by_cgroup=False)}


def test_lock_records_binaries_and_renders_them_for_processes(tmp_path: Path) -> None:
    path = tmp_path / "images.lock.json"
    lock = LOCK.with_binary(binary())
    write_lock(path, lock)
    again = read_lock(path)
    assert again == lock and again.binaries["cpu-avx512"].flags == FLAGS
    view = again.for_process()
    assert set(view.images) == {"cpu-avx512"}
    assert view.images["cpu-avx512"].image_id == binary().binary_id
    assert binaries.binary_for(again, binary().binary_id) == binary()
    assert binaries.binary_for(again, "sha256:" + "d" * 64) is None     # an image ID is not a binary
    body = json.loads(path.read_text())
    del body["binaries"]
    path.write_text(json.dumps(body))
    assert read_lock(path).binaries == {}                               # an old lock has no binaries


def test_native_build_arguments() -> None:
    avx2 = binaries.cmake_args("cpu-avx2", build_number=11434, commit="abc")
    assert "-DCMAKE_EXE_LINKER_FLAGS=-static" in avx2 and "-DGGML_AVX2=ON" in avx2
    assert "-DLLAMA_BUILD_NUMBER=11434" in avx2
    cuda = binaries.cmake_args("cuda", build_number=1, commit="x", cuda_architectures="90")
    assert "-DGGML_CUDA=ON" in cuda and "-DCMAKE_CUDA_ARCHITECTURES=90" in cuda
    assert binaries.cuda_architectures([(9, 0), (8, 6), (9, 0)]) == "86;90"
    with pytest.raises(BuildError, match="--cuda-arch"):
        binaries.cmake_args("cuda", build_number=1, commit="x")
    with pytest.raises(BuildError, match="no NVIDIA GPU"):
        binaries.cuda_architectures([])
    with pytest.raises(BuildError, match="unknown variant"):
        binaries.cmake_args("riscv", build_number=1, commit="x")


def test_cgroup_v1_host_says_why(tmp_path: Path) -> None:
    cg = Cgroups("i", root=tmp_path)
    assert not cg.available and "not mounted" in (cg.reason or "")
    assert cg.prepare("p", memory_bytes=1, pids_limit=1) is None


def test_cgroup_v2_leaf_gets_memory_and_pids_limits(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids io\n")
    for d in (tmp_path, tmp_path / "llama-supervisor", tmp_path / "llama-supervisor" / "i"):
        d.mkdir(exist_ok=True)
        (d / "cgroup.subtree_control").write_text("")   # as the kernel shows them in every cgroup
    cg = Cgroups("i", root=tmp_path)
    assert cg.available, cg.reason
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids"
    procs = cg.prepare("p1", memory_bytes=1 << 30, pids_limit=64)
    leaf = tmp_path / "llama-supervisor" / "i" / "p1"
    assert procs == leaf / "cgroup.procs"
    assert (leaf / "memory.max").read_text() == str(1 << 30) and (leaf / "pids.max").read_text() == "64"
    cg.prepare("p2", memory_bytes=None, pids_limit=8)
    assert (tmp_path / "llama-supervisor" / "i" / "p2" / "memory.max").read_text() == "max"
    cg2 = Cgroups("i", root=tmp_path / "missing-controllers")
    assert not cg2.available


def test_cgroup_without_memory_controller(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    assert "memory, pids" in (Cgroups("i", root=tmp_path).reason or "")


def test_process_runtime_without_a_binary_is_refused_with_the_fix(tmp_path: Path) -> None:
    lock = tmp_path / "images.lock.json"
    write_lock(lock, LOCK)
    with pytest.raises(RuntimeUnavailable, match="build --native"):
        choose("auto", instance="t", lock_path=lock, post=lambda ev: None, probe=lambda: "refused")
    with pytest.raises(ConfigError, match="use one of docker, process, auto"):
        choose("podman", instance="t", lock_path=lock, post=lambda ev: None)  # type: ignore[arg-type]


def test_reachability_by_another_uid_is_read_from_mode_bits() -> None:
    import tempfile

    from supervisor.runtime.process.records import unreachable_by

    tmp_path = Path(tempfile.mkdtemp(dir="/tmp"))      # pytest's own tmp root is 0700
    d = tmp_path / "private"
    d.mkdir()
    f = d / "model.gguf"
    f.write_text("x")
    tmp_path.chmod(0o755)
    f.chmod(0o644)
    d.chmod(0o750)
    why = unreachable_by(f, 65532, 65532, need=4)
    assert why is not None and str(d) in why and "0o750" in why
    d.chmod(0o755)
    assert unreachable_by(f, 65532, 65532, need=4) is None
    f.chmod(0o640)
    assert "0o640" in (unreachable_by(f, 65532, 65532, need=4) or "")
    assert unreachable_by(f, os.stat(f).st_uid, 0, need=4) is None       # the owner may read it
    assert "No such file" in (unreachable_by(d / "none", 65532, 65532, need=4) or "")
    import shutil

    shutil.rmtree(tmp_path)


def _record(pid: int | None, start_time: int | None, argv: list[str]) -> ProcessRecord:
    return ProcessRecord(id="r", model="m", config_hash="h", instance="i", image_id="x", binary="/b",
                         binary_sha256="s", argv=argv, env={}, uid=None, gid=None, rlimits=[], memory_bytes=None,
                         pids_limit=1, workdir="/w", log="/l", created_at="", status="running", pid=pid,
                         start_time=start_time)


def test_proof_of_a_pid_needs_start_time_and_command_line() -> None:
    me = proc_info(os.getpid())
    assert me is not None
    argv = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().decode().split("\0")[:-1]
    assert proof(_record(os.getpid(), me.start_time, argv)) is None
    assert "reused" in (proof(_record(os.getpid(), me.start_time + 1, argv)) or "")
    assert "another command line" in (proof(_record(os.getpid(), me.start_time, ["llama-server"])) or "")
    assert proof(_record(None, None, argv)) == "never started"


def test_log_rotation_keeps_three_and_a_writer_keeps_appending(tmp_path: Path) -> None:
    from supervisor.runtime.process.logfiles import shift, tail

    log = tmp_path / "m.log"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)    # as the model process holds it
    try:
        for i in range(4):
            os.write(fd, f"run {i} line a\nrun {i} line b\n".encode())
            shift(log, copy=True)                           # while it writes: copy, then truncate
        os.write(fd, b"after the last rotation\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"after the last rotation\n"  # O_APPEND: no hole of zeros at the old offset
    assert (tmp_path / "m.log.1").read_text() == "run 3 line a\nrun 3 line b\n"
    assert (tmp_path / "m.log.3").read_text() == "run 1 line a\nrun 1 line b\n"
    assert not (tmp_path / "m.log.4").exists()
    assert tail(tmp_path / "m.log.1", 1) == b"run 3 line b\n"
    shift(log)                                              # before a launch: a plain rename
    assert not log.exists() and (tmp_path / "m.log.1").read_text() == "after the last rotation\n"
    assert tail(log, 5) == b""
