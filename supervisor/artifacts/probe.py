"""Throwaway containers that read facts from an image: labelled as ours, never a model, always removed.

A lock record needs the llama-server binary (copied out of a created, never
started container) and what `--version` and `--help` print (run in a hardened
container: no network, read-only root, no capabilities, non-root, limits).
Every such container carries runtime.inspect_labels() and a name of its own,
and is removed by that name in a `finally`, so no failure, not even a lost
reply to the create call, leaves one behind. Engine errors come out as
RuntimeUnavailable / RuntimeOperationError, a wrong image as ImageMismatch.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import docker
import docker.errors
import requests.exceptions

from supervisor.errors import ImageMismatch, RuntimeOperationError, SupervisorError
from supervisor.artifacts.hashing import sha256_chunks
from supervisor.artifacts.labels import inspect_labels
from supervisor.artifacts.engine import engine_errors

# The '.' keeps it apart from model containers, named llama-supervisor-<name> with
# names of lowercase letters, digits and dashes only.
NAME_PREFIX = "llama-supervisor.inspect-"
USER = "65532:65532"          # the image's own non-root user: a wrong image runs no more privileged
ENGINE_HINT = "check the engine with 'docker info', then run the command again"
MAX_OUTPUT_LINES = 10_000


@dataclass(frozen=True)
class Ran:
    """One run of the image's binary: its exit code and what it printed (stdout and stderr)."""

    exit_code: int
    output: str

    def last_line(self) -> str:
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else "(no output)"


class ImageProbe:
    """Reads a file's hash from an image, and runs one of its binaries with arguments."""

    def __init__(self, client: docker.DockerClient, *, instance: str | None = None,
                 timeout_s: float = 60.0, memory: str = "512m") -> None:
        self._api = client.api
        self.instance = instance
        self.timeout_s = timeout_s
        self.memory = memory

    @contextmanager
    def container(self, image_id: str, entrypoint: str, args: Sequence[str] = ()) -> Iterator[str]:
        """A created (not started) inspect container running `entrypoint args`; removed on the way out.

        The entrypoint is given, never the image's own: an image without one (or
        without any command) can still be read, and what runs is the file whose
        hash is taken.
        """
        name = NAME_PREFIX + uuid.uuid4().hex[:12]
        try:
            with engine_errors("create", f"an inspect container of {image_id[:19]}", hint=ENGINE_HINT):
                host_config = self._api.create_host_config(
                    network_mode="none", read_only=True, cap_drop=["ALL"],
                    security_opt=["no-new-privileges:true"], mem_limit=self.memory,
                    memswap_limit=self.memory, pids_limit=64,
                    tmpfs={"/tmp": "rw,noexec,nosuid,size=16m"},
                )
                cid = str(self._api.create_container(
                    image_id, command=list(args), entrypoint=[entrypoint], name=name, user=USER,
                    labels=inspect_labels(image_id, instance=self.instance), network_disabled=True,
                    host_config=host_config,
                )["Id"])
            yield cid
        except BaseException as e:
            self._remove(name, pending=e)
            raise
        self._remove(name, pending=None)

    def _remove(self, name: str, *, pending: BaseException | None) -> None:
        """By name, so that a container whose create reply was lost goes too."""
        try:
            with engine_errors("remove", name, hint=f"remove it with 'docker rm -f {name}'"):
                try:
                    self._api.remove_container(name, force=True)
                except docker.errors.NotFound:
                    pass
        except SupervisorError as e:
            if pending is None:
                raise
            pending.add_note(str(e))     # keep the first error; say what is left behind

    def file_sha256(self, image_id: str, path: str) -> str:
        """SHA-256 of the regular file `path` in the image; ImageMismatch when there is none."""
        with self.container(image_id, path) as cid:
            with engine_errors("copy", f"{path} out of {image_id[:19]}", hint=ENGINE_HINT):
                try:
                    stream, _ = self._api.get_archive(cid, path)
                except docker.errors.NotFound as e:
                    raise ImageMismatch(f"no {path} in the image") from e
                return _member_sha256(stream, posixpath.basename(path), path)

    def read_file(self, image_id: str, path: str, *, entrypoint: str, max_bytes: int = 1 << 16) -> bytes | None:
        """The bytes of the small regular file `path` in the image (None when there is none); the
        container is created with `entrypoint` (the image's binary), never started."""
        with self.container(image_id, entrypoint) as cid:
            with engine_errors("copy", f"{path} out of {image_id[:19]}", hint=ENGINE_HINT):
                try:
                    stream, _ = self._api.get_archive(cid, path)
                except docker.errors.NotFound:
                    return None
                return _member_bytes(stream, posixpath.basename(path), path, max_bytes)

    def run(self, image_id: str, entrypoint: str, args: Sequence[str]) -> Ran:
        """Run `entrypoint args` to its end (at most timeout_s); ImageMismatch when it cannot start or hangs."""
        what = " ".join([posixpath.basename(entrypoint), *args])
        with self.container(image_id, entrypoint, args) as cid:
            with engine_errors("run", f"{what} in {image_id[:19]}", hint=ENGINE_HINT):
                try:
                    self._api.start(cid)
                except docker.errors.APIError as e:
                    # The engine answered: it is the image's binary that cannot be started
                    # (missing, not executable, another architecture, missing libraries).
                    raise ImageMismatch(f"{what} could not start: {e.explanation or e}") from e
                try:
                    status = self._api.wait(cid, timeout=self.timeout_s)
                except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                    if self._running(cid):
                        raise ImageMismatch(f"{what} did not exit within {self.timeout_s:.0f} s") from None
                    raise
                raw = self._api.logs(cid, stdout=True, stderr=True, tail=MAX_OUTPUT_LINES)
        return Ran(int(status.get("StatusCode", -1)), bytes(raw).decode(errors="replace"))

    def _running(self, cid: str) -> bool:
        state = self._api.inspect_container(cid).get("State") or {}
        return bool(state.get("Running"))


class _Chunks(io.RawIOBase):
    """A file over an iterator of byte chunks, for tarfile's streaming mode."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._rest:
            try:
                self._rest = next(self._it)
            except StopIteration:
                return 0
        n = min(len(buf), len(self._rest))
        buf[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def _member_bytes(stream: Iterable[bytes], name: str, path: str, max_bytes: int) -> bytes:
    """The one regular file of a `docker cp` tar stream, at most max_bytes (ImageMismatch past that)."""
    try:
        with tarfile.open(fileobj=io.BufferedReader(_Chunks(stream), 1 << 16), mode="r|") as tar:
            for member in tar:
                if member.name != name:
                    continue
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    raise ImageMismatch(f"{path} in the image is not a regular file")
                if member.size > max_bytes:
                    raise ImageMismatch(f"{path} in the image is {member.size} bytes, more than {max_bytes}")
                return f.read()
    except tarfile.TarError as e:
        raise RuntimeOperationError(f"docker copy {path}: the engine sent a broken archive ({e}): {ENGINE_HINT}") from e
    raise ImageMismatch(f"no {path} in the image")


def _member_sha256(stream: Iterable[bytes], name: str, path: str) -> str:
    """Hash the one file of a `docker cp` tar stream as it arrives (never the whole binary in memory)."""
    try:
        with tarfile.open(fileobj=io.BufferedReader(_Chunks(stream), 1 << 20), mode="r|") as tar:
            for member in tar:
                if member.name != name:
                    continue
                if member.issym() or member.islnk():
                    raise ImageMismatch(f"{path} in the image is a link to {member.linkname}, not the binary")
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    raise ImageMismatch(f"{path} in the image is not a regular file")
                return sha256_chunks(iter(lambda: f.read(1 << 20), b""))
    except tarfile.TarError as e:
        raise RuntimeOperationError(f"docker copy {path}: the engine sent a broken archive ({e}): {ENGINE_HINT}") from e
    raise ImageMismatch(f"no {path} in the image")
