"""The registry side of push: the /v2/ API through a hand-written fake registry (httpx.MockTransport),
the lock's `pushed` and `manifest_lists`, and the digests render pins from them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from supervisor import export
from supervisor.errors import ConfigError, ImageMismatch, RegistryError
from supervisor.export import swarm_deploy
from supervisor.artifacts.lock import ImageLock, ImageRecord, ManifestList, Pushed
from supervisor.artifacts.registry import (
    MANIFEST_LIST,
    MANIFEST_V2,
    RegistryApi,
    check_registry,
    insecure,
    list_body,
)

IMAGE_AMD64 = "sha256:" + "1" * 64
IMAGE_ARM64 = "sha256:" + "2" * 64
REG = "127.0.0.1:5000"
REPO = "llama-supervisor/llama-server"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """The distribution API as far as push uses it: /v2/, manifests by tag or digest, PUT of a manifest.

    `scheme` is the only scheme it answers (the other fails to connect, as plain HTTP does to TLS);
    `lie` serves other bytes than the digest asked for; `login` answers 401 everywhere.
    """

    def __init__(self, *, scheme: str = "http", login: bool = False) -> None:
        self.scheme = scheme
        self.login = login
        self.lie = False
        self.blobs: dict[str, tuple[str, bytes]] = {}        # digest -> (media type, bytes)
        self.tags: dict[str, str] = {}                        # "repo:tag" -> digest
        self.puts: list[bytes] = []

    def add_image(self, image_id: str, tag: str) -> str:
        body = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_V2,
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "size": 100, "digest": image_id},
                           "layers": []}).encode()
        d = digest_of(body)
        self.blobs[d] = (MANIFEST_V2, body)
        self.tags[f"{REPO}:{tag}"] = d
        return d

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != self.scheme:
            raise httpx.ConnectError("wrong scheme", request=request)
        if self.login:
            return httpx.Response(401)
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        repo, _, ref = path.removeprefix("/v2/").partition("/manifests/")
        if request.method == "PUT":
            data = request.content
            self.puts.append(data)
            d = digest_of(data)
            self.blobs[d] = (request.headers["content-type"], data)
            self.tags[f"{repo}:{ref}"] = d
            return httpx.Response(201, headers={"Docker-Content-Digest": d})
        d = ref if ref.startswith("sha256:") else self.tags.get(f"{repo}:{ref}", "")
        if d not in self.blobs:
            return httpx.Response(404)
        media, data = self.blobs[d]
        if self.lie:
            data = data.replace(b"schemaVersion", b"schemaversion")
        return httpx.Response(200, content=data, headers={"Content-Type": media, "Docker-Content-Digest": d})

    def api(self, *, allow_http: bool = True) -> RegistryApi:
        return RegistryApi(REG, allow_http=allow_http, transport=httpx.MockTransport(self.handler))


def test_check_image_accepts_the_locked_config_and_refuses_another() -> None:
    fake = FakeRegistry()
    d = fake.add_image(IMAGE_AMD64, "cpu-avx2")
    assert fake.api().check_image(REPO, d, IMAGE_AMD64).config_digest == IMAGE_AMD64
    with pytest.raises(ImageMismatch, match="holds image sha256:1111"):
        fake.api().check_image(REPO, d, IMAGE_ARM64)


def test_a_manifest_whose_bytes_do_not_hash_to_the_digest_is_refused() -> None:
    fake = FakeRegistry()
    d = fake.add_image(IMAGE_AMD64, "cpu-avx2")
    fake.lie = True
    with pytest.raises(ImageMismatch, match="served a manifest whose SHA-256 is"):
        fake.api().check_image(REPO, d, IMAGE_AMD64)


def test_plain_http_only_when_the_engine_allows_it() -> None:
    fake = FakeRegistry(scheme="http")
    assert fake.api(allow_http=True).base() == f"http://{REG}"
    with pytest.raises(RegistryError, match="unreachable.*insecure-registries"):
        fake.api(allow_http=False).base()
    assert FakeRegistry(scheme="https").api(allow_http=True).base() == f"https://{REG}"


def test_a_registry_that_wants_a_login_is_refused_with_that_said() -> None:
    with pytest.raises(RegistryError, match="login"):
        FakeRegistry(login=True).api().base()


def test_the_manifest_list_names_each_architecture_once_and_its_digest_is_what_was_put() -> None:
    fake = FakeRegistry()
    api = fake.api()
    amd = api.check_image(REPO, fake.add_image(IMAGE_AMD64, "cpu-generic"), IMAGE_AMD64)
    arm = api.check_image(REPO, fake.add_image(IMAGE_ARM64, "arm64"), IMAGE_ARM64)
    digest = api.put_list(REPO, "multiarch", [(amd, "amd64"), (arm, "arm64")])
    body = json.loads(fake.puts[-1])
    assert digest == digest_of(fake.puts[-1])
    assert body["mediaType"] == MANIFEST_LIST
    assert [(m["digest"], m["platform"]) for m in body["manifests"]] == [
        (amd.digest, {"architecture": "amd64", "os": "linux"}),
        (arm.digest, {"architecture": "arm64", "os": "linux", "variant": "v8"}),
    ]
    assert [m["size"] for m in body["manifests"]] == [amd.size, arm.size]
    listed = api.manifest(REPO, "multiarch")           # read back under its tag, by what it hashes to
    assert (listed.digest, listed.media_type) == (digest, MANIFEST_LIST)
    with pytest.raises(ConfigError, match="one image per architecture"):
        api.put_list(REPO, "twice", [(amd, "amd64"), (amd, "amd64")])
    assert list_body([(amd, "amd64")]) == list_body([(amd, "amd64")])      # same input, same bytes


@pytest.mark.parametrize("value", ["127.0.0.1:5000", "registry.internal:443", "reg", "[::1]:5000"])
def test_registry_names_accepted(value: str) -> None:
    assert check_registry(value) == value


@pytest.mark.parametrize("value", ["http://127.0.0.1:5000", "127.0.0.1:5000/path", "Reg:5000", "h:0", "h:99999", ""])
def test_registry_names_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_registry(value)


def test_insecure_follows_the_engines_settings() -> None:
    info = {"RegistryConfig": {"InsecureRegistryCIDRs": ["127.0.0.0/8"],
                               "IndexConfigs": {"secure.internal:5000": {"Secure": True},
                                                "plain.internal:5000": {"Secure": False}}}}
    assert insecure("127.0.0.1:5999", info)
    assert not insecure("10.0.0.1:5000", info)
    assert not insecure("secure.internal:5000", info)
    assert insecure("plain.internal:5000", info)
    assert not insecure("127.0.0.1:5000", {})


# --- the lock -------------------------------------------------------------------------------

def record(variant: str = "cpu-avx2", image_id: str = IMAGE_AMD64, arch: str = "amd64") -> ImageRecord:
    return ImageRecord(variant=variant, tag=f"{REPO}:{variant}", image_id=image_id, binary_sha256="b" * 64,
                       version="version: 1", build_number=1, flags=frozenset({"--port"}), source_sha256="s" * 64,
                       built_at="2026-01-01T00:00:00+00:00", architecture=arch)


def pushed(registry: str = REG, digest: str = "sha256:" + "d" * 64) -> Pushed:
    return Pushed(registry=registry, repository=f"{registry}/{REPO}", digest=digest, pushed_at="t")


def test_pushes_round_trip_through_the_lock_file_and_an_unpushed_record_reads_as_before() -> None:
    plain = ImageLock().with_record(record())
    assert "pushed" not in plain.dumps() and "manifest_lists" not in plain.dumps()
    entry = ManifestList(registry=REG, repository=f"{REG}/{REPO}", tag="multi", digest="sha256:" + "e" * 64,
                         variants=("cpu-generic", "arm64"), pushed_at="t")
    lock = plain.with_record(record().with_pushed(pushed())).with_manifest_list(entry)
    again = ImageLock.loads(lock.dumps())
    assert again == lock
    assert again.images["cpu-avx2"].pushed_to(REG) == pushed()
    assert again.manifest_lists[f"{REG}/{REPO}:multi"].variants == ("cpu-generic", "arm64")


def test_a_push_to_the_same_registry_replaces_the_earlier_one() -> None:
    r = record().with_pushed(pushed(digest="sha256:" + "1" * 64)).with_pushed(pushed("10.0.0.1:5000"))
    r = r.with_pushed(pushed(digest="sha256:" + "2" * 64))
    assert [(p.registry, p.digest[-4:]) for p in r.pushed] == [("10.0.0.1:5000", "d" * 4), (REG, "2" * 4)]


def test_a_rebuild_keeps_the_pushes_of_the_same_image_and_drops_those_of_another() -> None:
    lock = ImageLock().with_record(record().with_pushed(pushed()))
    assert lock.with_record(record()).images["cpu-avx2"].pushed == (pushed(),)
    assert lock.with_record(record(image_id=IMAGE_ARM64)).images["cpu-avx2"].pushed == ()


def test_render_pins_the_one_registry_recorded_and_asks_when_there_are_two() -> None:
    lock = ImageLock().with_record(record().with_pushed(pushed())).with_record(record("cuda"))
    assert export.pushed_refs(lock, {"cpu-avx2", "cuda"}) == {"cpu-avx2": pushed().ref}
    assert export.pushed_refs(lock, {"cuda"}) == {}
    two = lock.with_record(lock.images["cpu-avx2"].with_pushed(pushed("10.0.0.1:5000")))
    with pytest.raises(ConfigError, match="pick one with --registry"):
        export.pushed_refs(two, {"cpu-avx2"})
    assert export.pushed_refs(two, {"cpu-avx2"}, "10.0.0.1:5000") == {"cpu-avx2": pushed("10.0.0.1:5000").ref}


def test_deploy_resolves_on_the_registry_only_when_every_image_is_pinned() -> None:
    ref = pushed().ref
    assert swarm_deploy.resolve_mode(f"services:\n  a: {{image: '{ref}'}}\n  b: {{image: '{ref}'}}\n") == "always"
    assert swarm_deploy.resolve_mode(f"services:\n  a: {{image: '{ref}'}}\n  b: {{image: 'x:cpu'}}\n") == "never"
    assert swarm_deploy.resolve_mode("services: {}\n") == "never"


def test_lock_records_compare_equal_after_replace_of_pushed() -> None:
    # pushed is not an image fact: verify's comparison ignores it
    from supervisor.artifacts.lock import compare

    assert compare(record(), replace(record(), pushed=(pushed(),))) == []


@pytest.mark.parametrize("command", ["push", "pull"])
def test_push_and_pull_require_the_locks_signature_when_a_keyring_is_set(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from supervisor.artifacts.lock import write_lock
    from supervisor.cli.ctl import cli

    lock_path = tmp_path / "images.lock.json"
    write_lock(lock_path, ImageLock().with_record(record().with_pushed(pushed())))
    monkeypatch.setenv("LLAMA_SUPERVISOR_LOCK_KEYRING", str(tmp_path / "keyring.gpg"))
    monkeypatch.setenv("LLAMA_SUPERVISOR_STATE_DIR", str(tmp_path))
    done = CliRunner().invoke(cli, [command, "--registry", REG, "--lock", str(lock_path)])
    assert isinstance(done.exception, ImageMismatch) and "images.lock.json.asc is missing" in str(done.exception)


def test_a_pinned_stack_says_and_gets_resolve_always_and_kubernetes_drops_its_warning() -> None:
    from .test_export_render import SETS, models_of, options

    from supervisor.export import kubernetes, swarm

    models = models_of(SETS["manifests"])
    refs = {m.variant: pushed().ref for m in models}
    text = swarm.render(models, options(image_refs=refs))
    assert f"image: {pushed().ref}" in text and "--resolve-image always" in text
    assert swarm_deploy.resolve_mode(text) == "always"
    unpinned = swarm.render(models, options())
    assert "--resolve-image never" in unpinned and swarm_deploy.resolve_mode(unpinned) == "never"
    k8s = kubernetes.render(models, options(image_refs=refs))
    assert f"image: {pushed().ref}" in k8s and "NOT pinned" not in k8s
