"""A tampered image under the lock's tag: llama-supervisord refuses to start the model, before any create.

A scratch tag and a scratch lock stand in for the real ones (the real tag is never
touched): the lock records the real image under the scratch tag, then the tag is
moved to another image (retagged), or to an image whose llama-server has one byte
changed while the lock is forged to that image's ID (only the binary hash tells).
"""

from __future__ import annotations

import dataclasses
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from integration.daemon_harness import Daemon, free_port, model_yaml, remove_models
from supervisor.artifacts import images
from supervisor import paths
from supervisor.artifacts.lock import ImageLock, ImageRecord, write_lock

from .helpers import status_in, uid, write_manifest

pytestmark = pytest.mark.docker


@pytest.fixture
def scratch_tag(docker_client: docker.DockerClient, image_record: ImageRecord) -> Iterator[str]:
    tag = f"{paths.image_repo()}:fault-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(image_record.image_id).tag(tag)
    yield tag
    docker_client.images.remove(tag, force=True)


def _build(client: docker.DockerClient, dockerfile: str, tag: str) -> str:
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True)
    return str(image.id)


@pytest.mark.parametrize("tamper", ["retagged", "binary_byte_flipped"])
def test_tampered_image_is_refused_before_start(
    tmp_path: Path, docker_client: docker.DockerClient, image_record: ImageRecord, demo_model: Path,
    scratch_tag: str, tamper: str,
) -> None:
    record = dataclasses.replace(image_record, tag=scratch_tag)
    if tamper == "retagged":
        _build(docker_client, f"FROM {image_record.image_id}\nLABEL io.llama-supervisor.test=retagged\n", scratch_tag)
        expect = "rebuilt or retagged"
    else:
        new_id = _build(docker_client, f"""\
FROM {images.LOCAL_BUILDER} AS flip
COPY --from={scratch_tag} /usr/local/bin/llama-server /x
RUN size=$(stat -c %s /x) && printf '\\377' | dd of=/x bs=1 seek=$((size - 100)) conv=notrunc status=none
FROM {scratch_tag}
COPY --from=flip /x /usr/local/bin/llama-server
""", scratch_tag)
        record = dataclasses.replace(record, image_id=new_id)    # a lock edited to the new ID
        expect = "SHA-256"
    lock = tmp_path / "images.lock.json"
    write_lock(lock, ImageLock().with_record(record))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    name = uid("fimg")
    write_manifest(manifests, name, model_yaml(name, free_port(), demo_model, demo_model.parent.name))
    d = Daemon(manifests, extra=["--lock", str(lock)]).start()
    try:
        _, rec = d.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == name
                            and r.get("to") == "FATAL", 30, f"{name} FATAL")
        assert "verification failed" in rec["reason"] and expect in rec["reason"], rec
        st = status_in(d, name, "FATAL")
        assert expect in st.reason, st
        time.sleep(1)
        assert docker_client.api.containers(all=True, filters={"label": f"io.llama-supervisor.model={name}"}) == []
        assert not d.find(lambda r: r.get("event") == "created")
        assert len([r for _, r in d.lines if r.get("model") == name and r.get("to") == "STARTING"]) == 1
    except AssertionError:
        print(d.dump())
        raise
    finally:
        d.terminate()
        remove_models(docker_client, [name])
    assert docker_client.images.get(image_record.tag).id == image_record.image_id, "the real tag was touched"
