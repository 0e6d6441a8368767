"""What a container prints is untrusted: the log tail that becomes a model's `reason` (status, the
daemon's log, metrics) is bounded and free of terminal escapes (docs/SECURITY.md)."""

from __future__ import annotations

from typing import Any

from supervisor.runtime.docker.runtime import DockerRuntime

MAX_LINE_CHARS = 300


class _API:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def logs(self, container_id: str, **kw: Any) -> bytes:
        return self.raw


class _Client:
    def __init__(self, raw: bytes) -> None:
        self.api = _API(raw)

    def close(self) -> None:
        pass


def test_escapes_and_control_characters_are_removed_and_lines_cut() -> None:
    raw = (b"ok\n\x1b[2J\x1b]0;owned\x07clear screen\n" + b"x" * 50_000 + b"\n\xff\xfe\x00bad bytes\r\n")
    tail = DockerRuntime(_Client(raw)).log_tail("c", lines=5)      # type: ignore[arg-type]
    assert "\x1b" not in tail and "\x07" not in tail and "\x00" not in tail and "\r" not in tail
    assert all(len(line) <= MAX_LINE_CHARS + 3 for line in tail.splitlines())
    assert tail.splitlines()[0] == "ok" and "clear screen" in tail and "bad bytes" in tail
    assert len(tail) < 2_000
