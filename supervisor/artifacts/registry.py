"""A registry's HTTP API (distribution, /v2/), as far as push and pull need it.

Three things, each checked rather than trusted: read a manifest by tag or
digest (its bytes hash to the digest asked for), check that a pushed digest
holds exactly a locked image (a single-architecture manifest whose config
blob is the image ID: the image ID *is* that config's SHA-256), and put a
multi-architecture manifest list over manifests already pushed. The engine
does the pushing and pulling itself (supervisor.artifacts.push); this reads
the registry directly so that what the lock records is what the registry
serves, not what the engine said.

HTTPS first; plain HTTP only for a registry the engine itself treats as
insecure (its `insecure-registries`, which include 127.0.0.0/8 by default),
as the engine does. No authentication: a registry that answers 401 is
refused with that said. Every response is read bounded (MAX_MANIFEST_BYTES).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from supervisor.errors import ConfigError, ImageMismatch, RegistryError

if TYPE_CHECKING:
    import httpx

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SINGLE = (MANIFEST_V2, OCI_MANIFEST)
ACCEPT = ", ".join((MANIFEST_V2, OCI_MANIFEST, MANIFEST_LIST, OCI_INDEX))
MAX_MANIFEST_BYTES = 4 << 20          # the distribution registry's own limit on a manifest
TIMEOUT_S = 30.0

_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
REGISTRY = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:]+\])(?::(?P<port>[0-9]{{1,5}}))?$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# Docker's platform names for the lock's architectures; arm64 images are ARMv8.
PLATFORM_VARIANT = {"arm64": "v8"}


def check_registry(value: str) -> str:
    """A registry as `push --registry` takes it: HOST[:PORT], no scheme, no path."""
    m = REGISTRY.match(value)
    if m is None or (m.group("port") is not None and not 0 < int(m.group("port")) < 65536):
        raise ConfigError(f"--registry {value!r}: give HOST:PORT (e.g. 127.0.0.1:5000), without a scheme or path")
    return value


def host_of(registry: str) -> str:
    if registry.startswith("["):
        return registry[1:registry.index("]")]
    return registry.rsplit(":", 1)[0] if ":" in registry else registry


def insecure(registry: str, info: dict[str, Any]) -> bool:
    """Whether the engine (`docker info`) may reach `registry` over plain HTTP: it is listed in its
    IndexConfigs as not Secure, or its host is an address inside InsecureRegistryCIDRs."""
    config = info.get("RegistryConfig") or {}
    index = (config.get("IndexConfigs") or {}).get(registry)
    if index is not None:
        return not bool(index.get("Secure", True))
    try:
        address = ipaddress.ip_address(host_of(registry))
    except ValueError:
        return False
    for cidr in config.get("InsecureRegistryCIDRs") or ():
        try:
            if address in ipaddress.ip_network(str(cidr), strict=False):
                return True
        except ValueError:
            continue
    return False


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    size: int
    body: dict[str, Any]

    @property
    def config_digest(self) -> str:
        return str((self.body.get("config") or {}).get("digest", ""))


def list_body(entries: Iterable[tuple[Manifest, str]]) -> bytes:
    """A Docker manifest list over (manifest, architecture) pairs, as the bytes that are PUT (pure)."""
    manifests = []
    for manifest, arch in entries:
        platform: dict[str, str] = {"architecture": arch, "os": "linux"}
        if arch in PLATFORM_VARIANT:
            platform["variant"] = PLATFORM_VARIANT[arch]
        manifests.append({"mediaType": manifest.media_type, "size": manifest.size, "digest": manifest.digest,
                          "platform": platform})
    body = {"schemaVersion": 2, "mediaType": MANIFEST_LIST, "manifests": manifests}
    return json.dumps(body, indent=2, sort_keys=False).encode() + b"\n"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryApi:
    """One registry's /v2/ API over httpx; `transport` is for tests (httpx.MockTransport)."""

    def __init__(self, registry: str, *, allow_http: bool, transport: httpx.BaseTransport | None = None,
                 timeout_s: float = TIMEOUT_S) -> None:
        import httpx

        self.registry = check_registry(registry)
        self._allow_http = allow_http
        self._http = httpx.Client(transport=transport, timeout=httpx.Timeout(timeout_s), follow_redirects=False)
        self._base: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def base(self) -> str:
        """https://<registry>, or http:// when HTTPS cannot connect and the engine allows plain HTTP."""
        import httpx

        if self._base is not None:
            return self._base
        schemes = ("https", "http") if self._allow_http else ("https",)
        errors = []
        for scheme in schemes:
            try:
                response = self._http.get(f"{scheme}://{self.registry}/v2/")
            except httpx.TransportError as e:
                errors.append(f"{scheme}: {e}")
                continue
            if response.status_code == 401:
                raise RegistryError(
                    f"registry {self.registry} asks for a login (401): push and pull work with registries "
                    "that need none (a registry on this host or a trusted network)")
            if response.status_code != 200:
                raise RegistryError(f"registry {self.registry}: GET /v2/ answered {response.status_code}, "
                                    "not a registry API (distribution v2)")
            self._base = f"{scheme}://{self.registry}"
            return self._base
        hint = "" if self._allow_http else (
            " (plain HTTP is tried only for registries the engine lists in insecure-registries)")
        raise RegistryError(f"registry {self.registry} is unreachable ({'; '.join(errors)}){hint}")

    def manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest of `repository` (its path, without the registry) under a tag or a digest."""
        import httpx

        url = f"{self.base()}/v2/{repository}/manifests/{reference}"
        try:
            with self._http.stream("GET", url, headers={"Accept": ACCEPT}) as response:
                if response.status_code == 404:
                    raise RegistryError(f"{self.registry}/{repository}:{reference} is not in the registry")
                if response.status_code != 200:
                    raise RegistryError(f"GET {url}: {response.status_code}")
                data = _bounded(response.iter_bytes(), url)
                media_type = response.headers.get("content-type", "").split(";")[0].strip()
                header_digest = response.headers.get("docker-content-digest", "")
        except httpx.HTTPError as e:
            raise RegistryError(f"GET {url}: {e}") from e
        digest = sha256_digest(data)
        if DIGEST.match(reference) and digest != reference:
            raise ImageMismatch(f"{self.registry}/{repository}@{reference}: the registry served a manifest "
                                f"whose SHA-256 is {digest}")
        if header_digest and header_digest != digest:
            raise ImageMismatch(f"{url}: Docker-Content-Digest {header_digest}, but the bytes hash to {digest}")
        try:
            body = json.loads(data)
        except ValueError as e:
            raise RegistryError(f"{url}: not JSON ({e})") from e
        return Manifest(digest, media_type or str(body.get("mediaType", "")), len(data), body)

    def check_image(self, repository: str, digest: str, image_id: str) -> Manifest:
        """The manifest at `digest`, when it is one image whose config (its ID) is `image_id`."""
        manifest = self.manifest(repository, digest)
        where = f"{self.registry}/{repository}@{digest}"
        if manifest.media_type not in SINGLE:
            raise ImageMismatch(f"{where} is a {manifest.media_type or 'manifest of no type'}, not one image")
        if manifest.config_digest != image_id:
            raise ImageMismatch(f"{where} holds image {manifest.config_digest or '(none)'}, "
                                f"the lock has {image_id}")
        return manifest

    def put_list(self, repository: str, tag: str, entries: list[tuple[Manifest, str]]) -> str:
        """PUT a manifest list under `tag`; returns its digest (checked against what the registry says)."""
        import httpx

        archs = [arch for _, arch in entries]
        if len(set(archs)) != len(archs) or not archs:
            raise ConfigError(f"a manifest list needs one image per architecture, got {', '.join(archs) or 'none'}")
        data = list_body(entries)
        digest = sha256_digest(data)
        url = f"{self.base()}/v2/{repository}/manifests/{tag}"
        try:
            response = self._http.put(url, content=data, headers={"Content-Type": MANIFEST_LIST})
        except httpx.HTTPError as e:
            raise RegistryError(f"PUT {url}: {e}") from e
        if response.status_code != 201:
            raise RegistryError(f"PUT {url}: {response.status_code} {response.text[:500]}")
        said = response.headers.get("docker-content-digest", "")
        if said and said != digest:
            raise ImageMismatch(f"PUT {url}: the registry stored {said}, the list hashes to {digest}")
        return digest


def _bounded(chunks: Iterable[bytes], url: str) -> bytes:
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{url}: a manifest over {MAX_MANIFEST_BYTES} bytes: refused")
    return bytes(data)
