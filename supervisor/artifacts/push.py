"""Push locked images to a registry and pull them back, by digest, through the docker SDK.

`push` verifies the image against the lock first (a changed image is never
pushed under the lock's name), tags it `<registry>/<repository>:<variant>`,
pushes it, then reads the registry's manifest at the digest the engine
reported and checks that its config is the locked image ID before the digest
goes into the lock. `pull` does the reverse on another host: pull by the
locked digest, check the ID, tag it as the lock names it, verify it.
`push_list` puts a multi-architecture manifest list over variants already
pushed (one per architecture).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors

from supervisor.errors import ConfigError, ImageMismatch, RegistryError
from supervisor.artifacts import images
from supervisor.artifacts.engine import engine_errors
from supervisor.artifacts.lock import ImageLock, ImageRecord, ManifestList, Pushed
from supervisor.artifacts.registry import DIGEST, RegistryApi, check_registry, insecure

Progress = Callable[[str], None]
# Push status lines worth a line each (the rest is a progress bar per layer).
_SAY = ("Pushed", "Layer already exists", "Mounted from", "Pulling from", "Pull complete", "Already exists",
        "Digest:", "Status:")


def repository_path(tag: str) -> str:
    """The repository of a local tag: llama-supervisor/llama-server:cpu-avx2 -> llama-supervisor/llama-server."""
    name, sep, suffix = tag.rpartition(":")
    return name if sep and "/" not in suffix else tag


def api_for(client: docker.DockerClient, registry: str) -> RegistryApi:
    """The registry's API, with plain HTTP allowed where the engine allows it."""
    with engine_errors("info", "(registry settings)"):
        info = client.info()
    return RegistryApi(registry, allow_http=insecure(registry, info))


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _stream(chunks: Any, what: str, progress: Progress) -> str:
    """Follow a push/pull stream; returns the digest it reports (push), raises on its error line."""
    digest = ""
    for chunk in chunks:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message", "")
            raise RegistryError(f"{what}: {str(detail).strip()}")
        aux = chunk.get("aux") or {}
        if aux.get("Digest"):
            digest = str(aux["Digest"])
        status = str(chunk.get("status") or "")
        if status.startswith(_SAY) or (status and not chunk.get("progressDetail") and not chunk.get("id")):
            progress(f"{chunk.get('id', '')}: {status}" if chunk.get("id") else status)
    return digest


def push(client: docker.DockerClient, lock: ImageLock, variant: str, registry: str, *,
         progress: Progress, api: RegistryApi | None = None) -> ImageRecord:
    """Push the locked image of `variant`; returns its record with the registry's digest added."""
    registry = check_registry(registry)
    record = lock.get(variant)
    if record is None:
        raise ConfigError(f"no {variant} image in the lock: run 'llama-supervisorctl build {variant}' first")
    diffs = images.verify(client, lock, variant)
    if diffs:
        raise ImageMismatch(f"{record.tag} differs from the lock, not pushed: {'; '.join(diffs)}; "
                            f"run 'llama-supervisorctl verify {variant}'")
    path = repository_path(record.tag)
    repository = f"{registry}/{path}"
    with engine_errors("tag", f"{repository}:{variant}"):
        client.api.tag(record.image_id, repository, variant)
    progress(f"push {repository}:{variant} ({record.image_id[:19]})")
    with engine_errors("push", f"{repository}:{variant}"):
        digest = _stream(client.api.push(repository, tag=variant, stream=True, decode=True),
                         f"push {repository}:{variant}", progress)
    if not DIGEST.match(digest):
        raise RegistryError(f"push {repository}:{variant}: the engine reported no digest ({digest!r})")
    owned = api is None
    api = api or api_for(client, registry)
    try:
        api.check_image(path, digest, record.image_id)
    finally:
        if owned:
            api.close()
    progress(f"{variant}: {repository}@{digest} holds {record.image_id[:19]}")
    return record.with_pushed(Pushed(registry=registry, repository=repository, digest=digest, pushed_at=_now()))


def push_list(client: docker.DockerClient, lock: ImageLock, variants: list[str], registry: str, tag: str, *,
              api: RegistryApi | None = None) -> ManifestList:
    """A manifest list `tag` over the pushed variants (one per architecture) in their one repository."""
    records = []
    for variant in variants:
        record = lock.get(variant)
        pushed = record.pushed_to(registry) if record else None
        if record is None or pushed is None:
            raise ConfigError(f"{variant} is not pushed to {registry}: "
                              f"run 'llama-supervisorctl push --registry {registry} {variant}' first")
        records.append((record, pushed))
    repositories = {p.repository for _, p in records}
    if len(repositories) != 1:
        raise ConfigError(f"a manifest list lives in one repository; these variants are in {sorted(repositories)}")
    repository = repositories.pop()
    path = repository[len(registry) + 1:]
    owned = api is None
    api = api or api_for(client, registry)
    try:
        entries = [(api.check_image(path, p.digest, r.image_id), r.architecture) for r, p in records]
        digest = api.put_list(path, tag, entries)
    finally:
        if owned:
            api.close()
    return ManifestList(registry=registry, repository=repository, tag=tag, digest=digest,
                        variants=tuple(variants), pushed_at=_now())


def pull(client: docker.DockerClient, lock: ImageLock, variant: str, registry: str, *,
         progress: Progress) -> list[str]:
    """Pull the locked digest of `variant`, tag it as the lock names it, and verify it (the differences)."""
    record = lock.get(variant)
    if record is None:
        raise ConfigError(f"no {variant} image in the lock")
    pushed = record.pushed_to(check_registry(registry))
    if pushed is None:
        raise ConfigError(f"the lock records no push of {variant} to {registry}: "
                          f"run 'llama-supervisorctl push --registry {registry} {variant}' where it was built")
    progress(f"pull {pushed.ref}")
    with engine_errors("pull", pushed.ref):
        _stream(client.api.pull(pushed.repository, tag=pushed.digest, stream=True, decode=True),
                f"pull {pushed.ref}", progress)
    image = images.get_image(client, pushed.ref, variant=variant)
    if image.id != record.image_id:
        raise ImageMismatch(f"{pushed.ref} pulled as {image.id}, the lock has {record.image_id}")
    repo, _, tag = record.tag.rpartition(":")
    with engine_errors("tag", record.tag):
        client.api.tag(record.image_id, repo or record.tag, tag or "latest")
    return images.verify(client, lock, variant)
