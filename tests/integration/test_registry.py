"""A real registry: Debian's docker-registry (the distribution registry) on 127.0.0.1, the real image.

`push` records the registry's digest in the lock; the registry serves exactly the
locked image (its config is the image ID, and every layer blob unpacks to the
diff ID the image's config names); a pull by that digest onto a clean tag gives
the same image ID and `pull` (pull, tag, verify) passes; `render kubernetes`
pins the digest without --image-ref. A manifest list over an amd64 and an
arm64 image is put through the registry's API and the engine pulls the arm64
one from it by platform.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import httpx
import pytest
from click.testing import CliRunner

from supervisor.artifacts import push as push_mod
from supervisor.artifacts.lock import ImageLock, ImageRecord, Pushed, read_lock, write_lock
from supervisor.artifacts.registry import RegistryApi
from supervisor.cli.ctl import cli

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """docker-registry serving on 127.0.0.1:<free port> from a temporary storage directory."""
    if not os.path.exists(REGISTRY_BIN):
        reason = f"{REGISTRY_BIN} is missing (fix: 'make tools' as root installs Debian's docker-registry)"
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {reason}")
        pytest.skip(reason)
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'storage'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "registry.log", "wb"))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "registry.log").read_text()
            assert time.monotonic() < deadline, "docker-registry did not answer /v2/ within 20 s"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def refs(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Every reference a test adds to the engine, removed afterwards (only the references: images stay)."""
    added: list[str] = []
    yield added
    for ref in reversed(added):
        try:
            docker_client.images.remove(ref, noprune=True)
        except docker.errors.ImageNotFound:
            pass


def test_push_pull_by_digest_and_render(docker_client: docker.DockerClient, image_record: ImageRecord,
                                        registry: str, refs: list[str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    test_repo = f"llama-supervisor-test-{uuid.uuid4().hex[:8]}/llama-server"
    record = replace(image_record, tag=f"{test_repo}:{image_record.variant}", pushed=())
    docker_client.api.tag(record.image_id, test_repo, record.variant)
    refs.append(record.tag)
    state = tmp_path / "state"
    state.mkdir()
    lock_path = state / "images.lock.json"
    write_lock(lock_path, ImageLock().with_record(record))

    runner = CliRunner()
    # No daemon's socket here: every command uses this test's lock and state, not a running daemon's.
    no_daemon = ["--socket", str(tmp_path / "no-daemon.sock")]
    started = time.monotonic()
    done = runner.invoke(cli, [*no_daemon, "push", "--registry", registry, "--lock", str(lock_path), record.variant])
    push_s = time.monotonic() - started
    assert done.exit_code == 0, done.output
    pushed = read_lock(lock_path).images[record.variant].pushed_to(registry)
    assert pushed is not None and pushed.repository == f"{registry}/{test_repo}"
    refs.append(f"{pushed.repository}:{record.variant}")
    assert pushed.ref in done.output

    # What the registry serves, read without the engine: the config blob is the image ID, and each layer
    # blob hashes to its digest and unpacks to the diff ID the config names.
    base = f"http://{registry}/v2/{test_repo}"
    manifest = httpx.get(f"{base}/manifests/{pushed.digest}",
                         headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}).content
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == pushed.digest
    body = json.loads(manifest)
    config = httpx.get(f"{base}/blobs/{body['config']['digest']}").content
    assert "sha256:" + hashlib.sha256(config).hexdigest() == record.image_id
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    sizes = []
    for layer, diff_id in zip(body["layers"], diff_ids, strict=True):
        blob = httpx.get(f"{base}/blobs/{layer['digest']}").content
        sizes.append(len(blob))
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == diff_id

    # Pull by digest onto a clean tag: the same image ID.
    started = time.monotonic()
    docker_client.api.pull(pushed.repository, tag=pushed.digest)
    pull_s = time.monotonic() - started
    refs.append(pushed.ref)
    clean = f"{test_repo}-pulled:{uuid.uuid4().hex[:8]}"
    assert docker_client.images.get(pushed.ref).id == record.image_id
    docker_client.api.tag(pushed.ref, *clean.split(":"))
    refs.append(clean)
    assert docker_client.images.get(clean).id == record.image_id

    # `pull` on a lock whose tag is another clean one: pulls by digest, tags it so, and verify passes.
    other = replace(read_lock(lock_path).images[record.variant], tag=f"{test_repo}-verified:{record.variant}")
    other_lock = tmp_path / "other.lock.json"
    write_lock(other_lock, ImageLock().with_record(other))
    done = runner.invoke(cli, [*no_daemon, "pull", "--registry", registry, "--lock", str(other_lock)])
    refs.append(other.tag)
    assert done.exit_code == 0, done.output
    assert f"{record.variant}: OK {other.tag}" in done.output
    done = runner.invoke(cli, [*no_daemon, "verify", "--lock", str(other_lock), record.variant])
    assert done.exit_code == 0, done.output

    # render kubernetes pins the pushed digest without --image-ref (the repository's manifests pick this
    # host's variant, the one the fixture's lock record is).
    monkeypatch.setenv("LLAMA_SUPERVISOR_STATE_DIR", str(state))
    done = runner.invoke(cli, [*no_daemon, "render", "kubernetes", "--manifests", str(ROOT / "manifests")])
    assert done.exit_code == 0, done.output
    assert f"image: {pushed.ref}" in done.output and "NOT pinned" not in done.output
    print(f"\nregistry round trip: push {push_s:.1f}s, pull by digest {pull_s:.1f}s (layers already local), "
          f"{len(sizes)} layer(s), {sum(sizes)} bytes compressed")


def _tiny(client: docker.DockerClient, tag: str, platform: str) -> str:
    """A one-file FROM scratch image for `platform` (the engine builds it without running anything)."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY f /f\n"), ("f", platform.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = client.images.build(fileobj=context, custom_context=True, tag=tag, platform=platform, rm=True)
    return str(image.id)


def test_manifest_list_over_amd64_and_arm64(docker_client: docker.DockerClient, registry: str,
                                            refs: list[str]) -> None:
    """The list code against the real registry, with two small images of our own (one per architecture):
    the engine then pulls the arm64 image by platform from the list's tag."""
    repo = f"{registry}/llama-supervisor-test-{uuid.uuid4().hex[:8]}/tiny"
    lock = ImageLock()
    for variant, platform in (("cpu-generic", "linux/amd64"), ("arm64", "linux/arm64")):
        image_id = _tiny(docker_client, f"{repo}:{variant}", platform)
        refs.append(f"{repo}:{variant}")
        for line in docker_client.api.push(repo, tag=variant, stream=True, decode=True):
            assert "error" not in line, line
            digest = (line.get("aux") or {}).get("Digest", locals().get("digest"))
        record = ImageRecord(variant=variant, tag=f"{repo}:{variant}", image_id=image_id, binary_sha256="",
                             version="", build_number=0, flags=frozenset(), source_sha256="", built_at="",
                             architecture=platform.split("/")[1])
        lock = lock.with_record(record.with_pushed(Pushed(registry, repo, str(digest), "")))
    with RegistryApi(registry, allow_http=True) as api:
        entry = push_mod.push_list(docker_client, lock, ["cpu-generic", "arm64"], registry, "multiarch", api=api)
        listed = api.manifest(repo[len(registry) + 1:], "multiarch")
    assert listed.digest == entry.digest
    assert [m["platform"]["architecture"] for m in listed.body["manifests"]] == ["amd64", "arm64"]
    pulled = docker_client.api.pull(repo, tag="multiarch", platform="linux/arm64")
    refs.append(f"{repo}:multiarch")
    assert "Digest: " + entry.digest in pulled
    assert docker_client.images.get(f"{repo}:multiarch").id == lock.images["arm64"].image_id
