"""An empty base image of another platform, for images cross-built on this host.

The classic builder (the docker SDK's `build`) cannot give a build platform
and copy out of a stage of another platform (`COPY --from` refuses it), and
`FROM scratch` takes the host's architecture. So a cross build runs its stages
natively and ends `FROM` this base: an image with one layer (an empty /tmp) and
a config that says linux/arm64, which the built image inherits. It is written
here byte for byte (times are the epoch) and loaded with `docker load`, so its
ID is the same on every host; no registry is involved.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import docker
import docker.errors

from supervisor.artifacts.engine import engine_errors
from supervisor.artifacts.probe import ENGINE_HINT
from supervisor.errors import BuildError

REPO = "llama-supervisor/scratch"
EPOCH = "1970-01-01T00:00:00Z"
# Docker's architecture names (an image config's `architecture`, `variant`) per platform we cross-build for.
PLATFORMS = {"linux/arm64": ("arm64", "v8")}


def tag_for(platform: str) -> str:
    return f"{REPO}:{platform.replace('/', '-')}"


def _tar(members: list[tuple[str, bytes | None, int]]) -> bytes:
    """A tar of (name, data or None for a directory, mode) in this order: no owners, zero times."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uname, info.gname = mode, 0, "", ""
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def archive(platform: str) -> tuple[bytes, str]:
    """(`docker save` archive of the empty base, its image ID): pure, the same bytes every time."""
    if platform not in PLATFORMS:
        raise BuildError(f"no empty base for platform {platform!r}: known {', '.join(PLATFORMS)}")
    arch, variant = PLATFORMS[platform]
    layer = _tar([("tmp/", None, 0o1777)])
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": arch, "variant": variant, "os": "linux", "created": EPOCH, "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [{"created": EPOCH, "created_by": f"llama-supervisor: empty {platform} base"}],
    }, sort_keys=True, separators=(",", ":")).encode()
    config_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_id}.json", "RepoTags": [tag_for(platform)],
                            "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    return _tar([(f"{layer_id}/", None, 0o755), (f"{layer_id}/layer.tar", layer, 0o644),
                 (f"{config_id}.json", config, 0o644), ("manifest.json", manifest, 0o644)]), f"sha256:{config_id}"


def ensure(client: docker.DockerClient, platform: str) -> str:
    """The tag of the empty base for `platform`, loaded when it is absent or is not the expected image."""
    data, image_id = archive(platform)
    tag = tag_for(platform)
    with engine_errors("load", tag, hint=ENGINE_HINT):
        try:
            if client.images.get(tag).id == image_id:
                return tag
        except docker.errors.ImageNotFound:
            pass
        client.images.load(data)
        loaded = client.images.get(tag).id
    if loaded != image_id:
        raise BuildError(f"loaded {tag} as {loaded}, expected {image_id}: the engine rewrote the image config")
    return tag
