"""The cuda image (issue 19, section 2), built offline from Debian's CUDA toolkit, read and served without a GPU.

Marker `cuda`, run by `make test-cuda` (which makes the CUDA builder base and builds the image first: about
6 GB and a long compile on 2 cores, so not part of `make test`). The image must already be in the lock
(`llama-supervisorctl build cuda --cuda-arch 90`); the tests build nothing.

- Its binary facts are the lock's, read from the image: llama-server --version and --help ran in it on a host
  with no NVIDIA driver, and list the flags of the same source's CPU build.
- Its root holds llama-server, the libraries ldd names (the CUDA runtime and cuBLAS among them, never the
  driver's libcuda.so.1, which the NVIDIA container toolkit brings), the health check, and nothing else.
- Started as the daemon starts it (the spec render gives the cuda variant, created by DockerRuntime), less the
  device request this engine cannot serve (test_gpu_refusal.py: the daemon refuses it here), it serves the demo
  model on the CPU: the CUDA runtime finds no driver, llama.cpp reports no device and keeps its CPU backend.
"""

from __future__ import annotations

import io
import re
import statistics
import tarfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from supervisor import paths
from supervisor.artifacts import hardware, images
from supervisor.artifacts.lock import ImageLock, ImageRecord, read_lock
from supervisor.artifacts.probe import _Chunks  # the tar-stream reader the image probe uses
from supervisor.manifest import load_dir
from supervisor.render.desired import render_all
from supervisor.render.facts import stat_sizes
from supervisor.runtime.docker.runtime import DockerRuntime

from .daemon_harness import completion_speeds, free_port, healthy, remove_models, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.cuda]

LOAD_TIMEOUT = 300.0
SHARED_LIBRARY = re.compile(r"\.so(\.[0-9]+)*$")
# What the engine puts into every container it creates (an export lists them): not the image's.
ENGINE_FILES = ("/.dockerenv", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/dev/console")


@pytest.fixture(scope="module")
def cuda() -> ImageRecord:
    record = read_lock(paths.lock_path()).get("cuda")
    if record is None:
        pytest.fail(f"no cuda image in {paths.lock_path()}: run 'make image-cuda' "
                    "(scripts/make-base-images cuda, then llama-supervisorctl build cuda --cuda-arch 90)")
    return record


def test_the_lock_holds_the_facts_read_from_the_cuda_image(cuda: ImageRecord, image_record: ImageRecord,
                                                           docker_client: docker.DockerClient) -> None:
    image = docker_client.images.get(cuda.tag)
    assert image.id == cuda.image_id and image.labels["io.llama-supervisor.variant"] == "cuda"
    assert image.labels["io.llama-supervisor.cuda-architectures"]
    assert images.binary_sha256(docker_client, cuda.image_id) == cuda.binary_sha256
    assert cuda.version == image_record.version and cuda.build_number == image_record.build_number
    assert {"--ctx-size", "--threads", "--model", "--port", "--n-gpu-layers"} <= cuda.flags
    assert image_record.flags <= cuda.flags, sorted(image_record.flags - cuda.flags)
    assert any(line.startswith(("nvidia-cuda-toolkit ", "cuda-nvcc")) for line in cuda.toolchain), cuda.toolchain
    assert any(line.startswith(("libcudart", "cuda-cudart")) for line in cuda.toolchain), cuda.toolchain
    print(f"\ncuda: {cuda.tag} {cuda.image_id[:19]}, {image.attrs['Size'] / 1e6:.0f} MB; binary {cuda.binary_sha256}; "
          f"{cuda.compiler}; architectures {image.labels['io.llama-supervisor.cuda-architectures']}")


def test_the_root_holds_the_binary_its_libraries_and_no_driver(cuda: ImageRecord,
                                                               docker_client: docker.DockerClient) -> None:
    container = docker_client.containers.create(cuda.image_id, labels={"io.llama-supervisor.probe": "test-cuda"})
    files: dict[str, int] = {}
    try:
        with tarfile.open(fileobj=io.BufferedReader(_Chunks(container.export()), 1 << 16), mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    files["/" + member.name.removeprefix("./")] = member.size
    finally:
        container.remove(force=True)
    libraries = {p: s for p, s in files.items() if SHARED_LIBRARY.search(Path(p).name)}
    names = {Path(p).name for p in libraries}
    print("\n" + "\n".join(f"  {p}  {s / 1e6:.1f} MB" for p, s in sorted(libraries.items())))
    assert any(n.startswith("libcudart.so") for n in names) and any(n.startswith("libcublas.so") for n in names)
    assert not any(n.startswith(("libcuda.so", "libnvidia-")) for n in names), names   # the host's driver, not ours
    assert {"/usr/local/bin/llama-server", "/usr/local/bin/llama-healthcheck"} <= set(files)
    assert not any(p.endswith(("/sh", "/bash", "/busybox")) for p in files), "a shell in the runtime image"
    others = set(files) - set(libraries) - {"/usr/local/bin/llama-server", "/usr/local/bin/llama-healthcheck",
                                              "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/passwd", "/etc/group",
                                              images.TOOLCHAIN, *ENGINE_FILES}
    assert others == set(), sorted(others)


def test_started_as_the_daemon_starts_it_without_a_gpu_it_serves_on_the_cpu(
    tmp_path: Path, cuda: ImageRecord, docker_client: docker.DockerClient, demo_model: Path,
) -> None:
    name, port = f"cuda{uuid.uuid4().hex[:6]}", free_port()
    (tmp_path / f"{name}.yaml").write_text(f"""\
kind: model
name: {name}
source: {{path: {demo_model}, sha256: {demo_model.parent.name}}}
profile: gpu
server: {{port: {port}, ctx_size: 512, threads: 1}}
health: {{start_timeout: {LOAD_TIMEOUT:g}}}
resources: {{memory: 2g, pids: 128}}
---
kind: profile
name: gpu
variant: cuda
gpu: {{vendor: nvidia, layers: 99}}
""")
    gpu_host = replace(hardware.detect(), gpus=(hardware.GpuInfo(0, "a GPU this host does not have", 80 << 30),))
    manifests = load_dir(tmp_path)
    desired, problems = render_all(manifests, ImageLock().with_record(cuda), gpu_host, file_sizes=stat_sizes(manifests))
    assert problems == []
    spec = desired[name].spec
    assert spec.image_id == cuda.image_id and spec.gpu is not None and "99" in spec.argv
    runtime = DockerRuntime(docker_client)
    try:
        cid = runtime.create(replace(spec, gpu=None))      # the device request is the only difference
        started = time.monotonic()
        runtime.start(cid)
        try:
            wait_for(lambda: healthy(port, timeout=2), LOAD_TIMEOUT, f"{name} healthy on the CPU", step=0.2)
        except AssertionError:
            print(runtime.log_tail(cid, lines=40))
            raise
        loaded = time.monotonic() - started
        speeds, body = completion_speeds(port, 32, timeout=120)
        log = runtime.log_tail(cid, lines=400)
        runtime.inspect(cid)
        rss = runtime.memory_usage(cid)
        fallback = [line for line in log.splitlines() if "CUDA" in line or "cuda" in line][:4]
        print(f"\ncuda image on the CPU (no driver, no device): healthy {loaded:.1f} s after the start; generation "
              f"{statistics.median(speeds):.1f} tok/s (median of 3 x 32 tokens, 1 thread); "
              f"resident {rss / 2**20 if rss else float('nan'):.0f} MiB; {body['content']!r}\n" + "\n".join(fallback))
        assert fallback, "llama-server said nothing about CUDA: is this the CUDA build?"
    finally:
        remove_models(docker_client, [name])
