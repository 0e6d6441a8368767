"""Wrong images under a locked tag: verify, the build's derive and the daemon's check say so, and leave no container.

Each wrong image is made here from nothing but the builder base and in-memory
build contexts (no registry, no network), under a scratch repository that is
not llama-supervisor/*, and a scratch lock names it; the real tags and the real
lock are never touched:

- builder: the builder base image as it is (a unique LABEL on top gives it an
  ID of its own, so that no other engineer's build container counts as ours);
- no_binary: FROM scratch holding one text file, and labelled as a model
  container of instance HOSTILE (a container inherits its image's labels);
- version_fails: FROM scratch whose /usr/local/bin/llama-server is a static
  binary that prints a line and exits 1;
- hangs: the same, but the binary never exits (only the probe's timeout ends it).

"No container left" is checked twice: no container of the wrong image exists
afterwards (docker ps -a, filtered by ancestor and by our image label: other
engineers' containers come and go on this engine meanwhile), and the engine's
event log shows every container created for it labelled as an inspect
container and destroyed again.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from supervisor.artifacts import images
from supervisor.runtime.docker.verifier import LockVerifier
from supervisor.errors import ImageMismatch
from supervisor.artifacts.lock import ImageLock, ImageRecord, write_lock
from supervisor.artifacts.probe import NAME_PREFIX, ImageProbe
from supervisor.runtime import LABEL_IMAGE, LABEL_INSTANCE, LABEL_MANAGED, LABEL_PURPOSE
from supervisor.runtime.docker.runtime import DockerRuntime
from unit.helpers import desired

pytestmark = pytest.mark.docker

CTL = str(Path(sys.executable).with_name("llama-supervisorctl"))
KINDS = ("builder", "no_binary", "version_fails")
HOSTILE = f"hostile-{uuid.uuid4().hex[:6]}"

FAILS_C = b"""#include <stdio.h>
int main(int argc, char **argv) {
    fprintf(stderr, "not llama-server: %s\\n", argc > 1 ? argv[1] : "");
    return 1;
}
"""
HANGS_C = b"""#include <unistd.h>
int main(void) { for (;;) pause(); }
"""


def _context(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _build(client: docker.DockerClient, tag: str, files: dict[str, bytes], target: str | None = None) -> str:
    image, _ = client.images.build(fileobj=_context(files), custom_context=True, tag=tag, rm=True,
                                   forcerm=True, network_mode="none", target=target)
    return str(image.id)


@pytest.fixture(scope="module")
def wrong(docker_client: docker.DockerClient, image_record: ImageRecord) -> Iterator[dict[str, str]]:
    """kind -> scratch tag of a wrong image; its ID via docker_client.images.get."""
    run = uuid.uuid4().hex[:8]
    repo = f"llama-supervisor-test/wrong-{run}"
    labels = (f'LABEL io.llama-supervisor.variant="{image_record.variant}" '
              f'io.llama-supervisor.llama-build="{image_record.build_number}" '
              f'io.llama-supervisor.source-sha256="{image_record.source_sha256}"\n')
    cc = (f"FROM {images.LOCAL_BUILDER} AS cc\nCOPY fails.c hangs.c /src/\n"
          "RUN gcc -static -Os -o /fails /src/fails.c && gcc -static -Os -o /hangs /src/hangs.c\n")
    binaries = {
        "Dockerfile": (cc + "FROM scratch AS version_fails\n" + labels
                       + "COPY --from=cc /fails /usr/local/bin/llama-server\n"
                       + "FROM scratch AS hangs\nCOPY --from=cc /hangs /usr/local/bin/llama-server\n").encode(),
        "fails.c": FAILS_C, "hangs.c": HANGS_C,
    }
    tags = {kind: f"{repo}:{kind}" for kind in (*KINDS, "hangs")}
    try:
        _build(docker_client, tags["builder"],
               {"Dockerfile": f"FROM {images.LOCAL_BUILDER}\nLABEL io.llama-supervisor.test={run}\n".encode()})
        _build(docker_client, tags["no_binary"],
               {"Dockerfile": ("FROM scratch\nCOPY readme.txt /readme.txt\n"
                               f"LABEL io.llama-supervisor.managed=true io.llama-supervisor.instance={HOSTILE} "
                               "io.llama-supervisor.model=hostile io.llama-supervisor.config-hash=x\n").encode(),
                "readme.txt": b"not an image\n"})
        _build(docker_client, tags["version_fails"], binaries, target="version_fails")
        _build(docker_client, tags["hangs"], binaries, target="hangs")
        yield tags
    finally:
        for tag in tags.values():
            try:
                docker_client.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass
    assert docker_client.images.get(image_record.tag).id == image_record.image_id, "the real tag was touched"


def _leftovers(client: docker.DockerClient, image_id: str) -> set[str]:
    """Every container, in any state, created from the image or labelled as reading it."""
    rows = client.api.containers(all=True, filters={"ancestor": image_id})
    rows += client.api.containers(all=True, filters={"label": f"{LABEL_IMAGE}={image_id}"})
    return {r["Id"] for r in rows}


class Watch:
    """docker ps -a before and after, and the engine's container events in between, for one image."""

    def __init__(self, client: docker.DockerClient, image_id: str) -> None:
        self.client, self.image_id = client, image_id
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Watch:
        self.before = _leftovers(self.client, self.image_id)
        self.since = time.time() - 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = _leftovers(self.client, self.image_id)
        self.events = list(self.client.events(
            since=self.since, until=time.time() + 1, decode=True,
            filters={"type": "container", "label": f"{LABEL_IMAGE}={self.image_id}"}))

    def created(self) -> list[dict[str, str]]:
        return [e["Actor"]["Attributes"] for e in self.events if e["Action"] == "create"]

    def assert_clean(self, *, creates: int, instance: str | None = None) -> None:
        assert self.before == set() and self.after == set(), (self.before, self.after)
        created = self.created()
        assert len(created) == creates, self.events
        for attrs in created:
            assert attrs[LABEL_PURPOSE] == "inspect" and attrs[LABEL_MANAGED] == "false", attrs
            assert attrs["name"].startswith(NAME_PREFIX) and attrs["io.llama-supervisor.model"] == "", attrs
            assert attrs[LABEL_INSTANCE] == (instance or ""), attrs
        ids = {e["Actor"]["ID"] for e in self.events if e["Action"] == "create"}
        assert ids == {e["Actor"]["ID"] for e in self.events if e["Action"] == "destroy"}, self.events


def _lock(tmp_path: Path, record: ImageRecord) -> Path:
    path = tmp_path / "images.lock.json"
    write_lock(path, ImageLock().with_record(record))
    return path


WHY = {
    "builder": ["binary_sha256: lock {sha}, image unknown (no /usr/local/bin/llama-server in the image)",
                "variant: lock {variant}, image (none)"],
    "no_binary": ["binary_sha256: lock {sha}, image unknown (no /usr/local/bin/llama-server in the image)",
                  "flags: lock {nflags} flags, image unknown (not run: no /usr/local/bin/llama-server in the image)"],
    "version_fails": ["version: lock {version}, image unknown ('llama-server --version' exited 1: "
                      "not llama-server: --version)",
                      "flags: lock {nflags} flags, image unknown ('llama-server --help' exited 1: "
                      "not llama-server: --help)"],
}
FIELDS = {   # compiler and toolchain: the lock records how the binary was built (issue 19)
    "builder": ["image_id", "binary_sha256", "version", "build_number", "source_sha256", "variant", "compiler",
                "flags", "warned_flags", "toolchain"],
    "no_binary": ["image_id", "binary_sha256", "version", "build_number", "source_sha256", "variant", "compiler",
                  "flags", "warned_flags", "toolchain"],
    "version_fails": ["image_id", "binary_sha256", "version", "compiler", "flags", "warned_flags",
                      "toolchain"],   # labels: the lock's
}
CREATES = {"builder": 1, "no_binary": 1, "version_fails": 4}   # a missing binary is never run; the 4th reads toolchain.txt


@pytest.mark.parametrize("kind", KINDS)
def test_verify_names_every_differing_field_of_a_wrong_image_and_leaves_no_container(
    kind: str, tmp_path: Path, docker_client: docker.DockerClient, image_record: ImageRecord,
    wrong: dict[str, str],
) -> None:
    record = dataclasses.replace(image_record, tag=wrong[kind])
    image_id = docker_client.images.get(wrong[kind]).id
    with Watch(docker_client, image_id) as watch:
        out = subprocess.run([CTL, "verify", record.variant, "--lock", str(_lock(tmp_path, record))],
                             capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert out.returncode == 3, text
    lines = out.stdout.splitlines()
    assert lines[0] == f"{record.variant}: MISMATCH", text
    assert [line.strip().split(":", 1)[0] for line in lines[1:]] == FIELDS[kind], text
    assert f"  image_id: lock {record.image_id}, image {image_id}" in lines, text
    for why in WHY[kind]:
        assert "  " + why.format(sha=record.binary_sha256, variant=record.variant, version=record.version,
                                 nflags=len(record.flags)) in lines, text
    assert "rebuild with 'llama-supervisorctl build VARIANT'" in out.stderr, text
    watch.assert_clean(creates=CREATES[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_deriving_a_lock_record_from_a_wrong_image_fails_clearly_and_leaves_no_container(
    kind: str, docker_client: docker.DockerClient, wrong: dict[str, str],
) -> None:
    """What `build` does after the image is built: a record it cannot complete is refused, with the reason."""
    image_id = docker_client.images.get(wrong[kind]).id
    why = "exited 1: not llama-server: --version" if kind == "version_fails" else "no /usr/local/bin/llama-server"
    with Watch(docker_client, image_id) as watch, pytest.raises(ImageMismatch, match=why):
        images.derive(docker_client, wrong[kind])
    watch.assert_clean(creates=CREATES[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_daemon_refuses_a_wrong_image_the_lock_was_edited_to_and_leaves_no_container(
    kind: str, tmp_path: Path, docker_client: docker.DockerClient, image_record: ImageRecord,
    wrong: dict[str, str],
) -> None:
    """The pre-launch check with the lock forged to the wrong image's ID: only the binary can tell."""
    image_id = docker_client.images.get(wrong[kind]).id
    lock = _lock(tmp_path, dataclasses.replace(image_record, tag=wrong[kind], image_id=image_id))
    model = desired("wrongimg")
    model = dataclasses.replace(model, spec=dataclasses.replace(model.spec, image_id=image_id))
    why = "has SHA-256" if kind == "version_fails" else "no /usr/local/bin/llama-server in the image: refusing"
    with Watch(docker_client, image_id) as watch, pytest.raises(ImageMismatch, match=why):
        LockVerifier(docker_client, lock, instance="wrong-image-test").check_image(model)
    watch.assert_clean(creates=1, instance="wrong-image-test")


def test_a_binary_that_never_exits_is_a_mismatch_and_its_container_is_removed(
    docker_client: docker.DockerClient, wrong: dict[str, str],
) -> None:
    image_id = docker_client.images.get(wrong["hangs"]).id
    probe = ImageProbe(docker_client, timeout_s=2)
    with Watch(docker_client, image_id) as watch, pytest.raises(ImageMismatch, match="did not exit within 2 s"):
        probe.run(image_id, images.BINARY, ["--version"])
    watch.assert_clean(creates=1)


def test_an_inspect_container_is_never_listed_as_a_model_and_goes_when_its_user_fails(
    docker_client: docker.DockerClient, wrong: dict[str, str],
) -> None:
    """Read from the image labelled as a model of instance HOSTILE: its probe still is no model of HOSTILE's."""
    image_id = docker_client.images.get(wrong["no_binary"]).id
    probe = ImageProbe(docker_client, instance=HOSTILE)
    with Watch(docker_client, image_id) as watch, pytest.raises(RuntimeError, match="the caller failed"):
        with probe.container(image_id, images.BINARY, ["--version"]) as cid:
            labels = docker_client.api.inspect_container(cid)["Config"]["Labels"]
            assert {k: labels[k] for k in (LABEL_PURPOSE, LABEL_MANAGED, LABEL_INSTANCE, LABEL_IMAGE,
                                          "io.llama-supervisor.model")} == {
                LABEL_PURPOSE: "inspect", LABEL_MANAGED: "false", LABEL_INSTANCE: HOSTILE,
                LABEL_IMAGE: image_id, "io.llama-supervisor.model": ""}
            assert cid not in {c.id for c in DockerRuntime(docker_client, instance=HOSTILE).list_managed()}
            assert cid not in {c.id for c in DockerRuntime(docker_client).list_managed()}
            raise RuntimeError("the caller failed")
    watch.assert_clean(creates=1, instance=HOSTILE)
