"""llama-server's word that it has loaded (supervisor/runtime/process/readiness.py), on real pipes and FIFOs:
the state lines of the router's child protocol, cut to size, read on one thread; the exit command."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.runtime.process.readiness import EXIT_COMMAND, Lines, ReadyWatch, ask_exit, make_fifo, state_of

from .helpers import until


def line(state: str, payload: object = None) -> bytes:
    return b"cmd_child_to_router:state:" + json.dumps({"state": state, "payload": payload or {}}).encode()


def test_state_of_reads_only_the_protocol_lines() -> None:
    assert state_of(line("ready", {"model": "m"})) == "ready"
    assert state_of(line("loading", {"value": 0.5})) == "loading"
    assert state_of(b"main: model loaded") is None                       # a log line on stdout
    assert state_of(b"cmd_child_to_router:state:{not json") is None
    assert state_of(b'cmd_child_to_router:state:["ready"]') is None       # not an object
    assert state_of(b'cmd_child_to_router:state:{"state": 1}') is None
    assert state_of(b'xcmd_child_to_router:state:{"state": "ready"}') is None


def test_lines_are_joined_across_reads_and_an_overlong_one_is_dropped_whole() -> None:
    lines = Lines(limit=10)
    assert lines.feed(b"abc") == []
    assert lines.feed(b"de\nfg") == [b"abcde"]
    assert lines.feed(b"0123456789") == []                # "fg" + 10 bytes: over the limit, dropped...
    assert lines.feed(b"tail\nok\n") == [b"ok"]            # ... to its end, not cut into a line of its own
    assert lines.feed(b"0123456789\n") == [b"0123456789"]  # exactly the limit is kept
    assert lines.feed(b"01234567890\nnext\n") == [b"next"]


@pytest.fixture()
def watch() -> Iterator[tuple[ReadyWatch, list[tuple[str, int]]]]:
    seen: list[tuple[str, int]] = []
    w = ReadyWatch(lambda rid, pid: seen.append((rid, pid)))
    yield w, seen
    w.close()


def test_a_ready_line_is_reported_once_with_its_record_and_pid(watch: tuple[ReadyWatch, list[tuple[str, int]]]
                                                               ) -> None:
    w, seen = watch
    r, wr = os.pipe()
    w.watch("rec", 42, r)
    ready = line("ready", {"meta": "x" * 5000})
    os.write(wr, line("loading") + b"\n" + b"srv  init: a log line\n" + ready[:100])
    assert not until(lambda: bool(seen), 0.3), "not before the line is complete"
    os.write(wr, ready[100:] + b"\n")
    assert until(lambda: seen == [("rec", 42)], 5)
    os.close(wr)                                           # the server exited: the watch lets go of its end
    assert until(lambda: r not in w._sel.get_map(), 5)


def test_the_watch_reads_several_pipes_and_survives_a_failing_callback() -> None:
    seen: list[str] = []
    boom = threading.Event()

    def on_ready(rid: str, pid: int) -> None:
        if rid == "bad" and not boom.is_set():
            boom.set()
            raise RuntimeError("post failed")
        seen.append(rid)

    w = ReadyWatch(on_ready)
    try:
        pipes = {rid: os.pipe() for rid in ("bad", "a", "b")}
        for pid, (rid, (r, _)) in enumerate(pipes.items()):
            w.watch(rid, pid, r)
        os.write(pipes["bad"][1], line("ready") + b"\n")
        assert until(boom.is_set, 5)
        for rid in ("b", "a"):
            os.write(pipes[rid][1], line("ready") + b"\n")
        assert until(lambda: sorted(seen) == ["a", "b"], 5), seen
        for _, wr in pipes.values():
            os.close(wr)
    finally:
        w.close()


def test_ask_exit_writes_the_command_to_a_fifo_someone_reads(tmp_path: Path) -> None:
    path = tmp_path / "s.fifo"
    held = make_fifo(path)                                 # as the server holds its stdin: read and write
    try:
        assert ask_exit(path)
        assert os.read(held, 100) == EXIT_COMMAND
    finally:
        os.close(held)
    assert not ask_exit(path), "nobody has it open for reading (ENXIO): nothing to tell"
    assert not ask_exit(tmp_path / "missing.fifo")
    (tmp_path / "plain").write_text("")
    assert not ask_exit(tmp_path / "plain"), "only a FIFO is written to"
    os.symlink(path, tmp_path / "link.fifo")
    held = os.open(path, os.O_RDWR)
    try:
        assert not ask_exit(tmp_path / "link.fifo"), "a link is not followed"
    finally:
        os.close(held)


def test_make_fifo_replaces_an_old_one_with_what_was_unread_in_it(tmp_path: Path) -> None:
    path = tmp_path / "s.fifo"
    old = make_fifo(path)
    assert ask_exit(path)
    new = make_fifo(path)
    try:
        os.set_blocking(new, False)
        with pytest.raises(BlockingIOError):
            os.read(new, 100)                              # empty: a relaunch does not inherit an exit
    finally:
        os.close(old)
        os.close(new)
