"""Hostile downloads and tarballs (docs/SECURITY.md, 'Downloads'), served by httpx.MockTransport."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from supervisor.artifacts import source
from supervisor.artifacts.download import download
from supervisor.errors import FetchError, SourceMismatch


def client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def fetch(tmp_path: Path, url: str, handler: Callable[[httpx.Request], httpx.Response], **kw: object) -> Path:
    dest = tmp_path / "out.part"
    download(url, dest, progress=lambda _: None, label="t", client=client(handler), **kw)  # type: ignore[arg-type]
    return dest


def test_a_redirect_from_https_to_http_is_refused(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(str(req.url))
        if req.url.scheme == "https":
            return httpx.Response(302, headers={"location": "http://evil.example/x.gguf"})
        return httpx.Response(200, content=b"GGUF-from-plain-http")

    with pytest.raises(FetchError, match="not https"):
        fetch(tmp_path, "https://models.example/x.gguf", handler)
    assert seen == ["https://models.example/x.gguf"]             # the http URL was never requested


def test_https_redirects_are_followed_and_http_only_when_asked(tmp_path: Path) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/a":
            return httpx.Response(301, headers={"location": "/b"})
        if req.url.path == "/b" and req.url.scheme == "https":
            return httpx.Response(302, headers={"location": "http://cdn.example/c"})
        return httpx.Response(200, content=b"body")

    assert fetch(tmp_path, "https://x.example/a", handler, allow_http=True).read_bytes() == b"body"
    assert fetch(tmp_path, "http://x.example/c", handler).read_bytes() == b"body"   # asked for http itself


def test_a_redirect_loop_ends(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="redirects"):
        fetch(tmp_path, "https://x.example/a", lambda r: httpx.Response(302, headers={"location": "/a"}))


def test_a_body_over_the_size_limit_is_refused_by_header_and_while_reading(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="over the 1000 byte limit"):
        fetch(tmp_path, "https://x.example/m", lambda r: httpx.Response(200, content=b"x" * 5000), max_bytes=1000)

    def endless(_: httpx.Request) -> httpx.Response:
        def body() -> Iterator[bytes]:
            while True:
                yield b"x" * 4096
        return httpx.Response(200, content=body())                 # no Content-Length: counted while reading

    with pytest.raises(FetchError, match="more than 100000 bytes"):
        fetch(tmp_path, "https://x.example/m", endless, max_bytes=100_000)


def test_a_body_shorter_than_its_content_length_is_an_error(tmp_path: Path) -> None:
    def short(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": "100"}, stream=httpx.ByteStream(b"x" * 40))

    with pytest.raises(FetchError, match="40 of 100"):
        fetch(tmp_path, "https://x.example/m", short)


def test_a_source_with_the_wrong_hash_never_lands_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_CACHE_DIR", str(tmp_path / "cache"))
    body = tarball({"llama.cpp/CMakeLists.txt": b"x"})
    with pytest.raises(SourceMismatch):
        source.resolve("https://x.example/..", sha256="0" * 64,
                       client=client(lambda r: httpx.Response(200, content=body)))
    assert list((tmp_path / "cache" / "sources").iterdir()) == []       # no partial, no wrong file
    good = source.resolve("https://x.example/..", sha256=hashlib.sha256(body).hexdigest(),
                          client=client(lambda r: httpx.Response(200, content=body)))
    assert good.path.parent == tmp_path / "cache" / "sources" and good.path.name.startswith("url-")


def tarball(files: dict[str, bytes], *, extra: Callable[[tarfile.TarFile], None] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra:
            extra(tar)
    return buf.getvalue()


def _member(name: str, kind: bytes, linkname: str = "") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tar.addfile(info)
    return add


@pytest.mark.parametrize(("files", "extra", "why"), [
    ({"llama.cpp/../../etc/cron.d/x": b"x"}, None, "'..'"),
    ({"/etc/cron.d/x": b"x"}, None, "absolute"),
    ({}, _member("llama.cpp/evil", tarfile.SYMTYPE, "/etc/shadow"), "a link"),
    ({}, _member("llama.cpp/hard", tarfile.LNKTYPE, "/etc/shadow"), "a link"),
    ({}, _member("llama.cpp/dev", tarfile.CHRTYPE), "a device"),
    ({}, _member("llama.cpp/fifo", tarfile.FIFOTYPE), "FIFO"),
])
def test_hostile_tarball_members_are_refused_naming_the_member(
    tmp_path: Path, files: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None, why: str
) -> None:
    p = tmp_path / "src.tar.gz"
    p.write_bytes(tarball({"llama.cpp/CMakeLists.txt": b"x", **files}, extra=extra))
    with pytest.raises(SourceMismatch, match=why) as e:
        source.resolve(str(p))
    assert "member" in str(e.value)


def test_a_plain_tarball_passes(tmp_path: Path) -> None:
    p = tmp_path / "src.tar.gz"
    p.write_bytes(tarball({"llama.cpp/CMakeLists.txt": b"x", "llama.cpp/src/a.c": b"int x;"}))
    assert source.resolve(str(p)).path == p
