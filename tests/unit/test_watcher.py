"""The manifest watcher: a burst of editor writes becomes one ManifestsChanged; reads do not count.

No fixed sleep followed by "the queue is still empty" (that passes whenever the event is merely late):
each check ends on a later marker change. Watchdog delivers one directory's events in order, so once
the marker's event (or the post it causes) is in, everything before it has been seen.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from supervisor.core.events import Event, ManifestsChanged
from supervisor.daemon.watcher import ManifestWatcher, _Handler


def test_rename_save_burst_is_debounced_into_one_reload(tmp_path: Path) -> None:
    q: queue.Queue[Event] = queue.Queue()
    w = ManifestWatcher(tmp_path, q.put, debounce_s=0.2)
    w.start()
    try:
        for i in range(5):                          # an editor: write aside, rename over
            (tmp_path / ".m.yaml.swp").write_text(str(i))
            (tmp_path / "m.yaml.tmp").write_text(f"kind: model\n# {i}\n")
            (tmp_path / "m.yaml.tmp").rename(tmp_path / "m.yaml")
        assert isinstance(q.get(timeout=10), ManifestsChanged)
        (tmp_path / "marker.yaml").write_text("# a later change\n")
        assert isinstance(q.get(timeout=10), ManifestsChanged)
        # A post of the burst's own would have been queued before the marker's: none is left.
        assert q.empty(), [q.get_nowait() for _ in range(q.qsize())]
    finally:
        w.close()


class _Recorder(FileSystemEventHandler):
    """The watcher's own handler, fed the real event stream; `changes` counts what it calls a change."""

    def __init__(self) -> None:
        self.changes = 0
        self.events: list[FileSystemEvent] = []
        self.marker_seen = threading.Event()
        self._inner = _Handler(self._changed)

    def _changed(self) -> None:
        self.changes += 1

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self.marker_seen.is_set():
            return
        if str(event.src_path).endswith("marker.yaml"):
            self.marker_seen.set()
            return
        self.events.append(event)
        self._inner.on_any_event(event)


def test_reads_and_other_files_are_not_changes(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("kind: model\n")
    recorder = _Recorder()
    observer = Observer()
    observer.schedule(recorder, str(tmp_path), recursive=False)
    observer.start()
    try:
        (tmp_path / "m.yaml").read_text()           # the loop's own read: opened, closed (no write)
        (tmp_path / "notes.txt").write_text("x")    # not a manifest
        (tmp_path / "marker.yaml").write_text("")   # everything above was delivered before this
        assert recorder.marker_seen.wait(10), "watchdog never reported the marker"
    finally:
        observer.stop()
        observer.join(5)
    kinds = {e.event_type for e in recorder.events}
    assert {"opened", "closed_no_write"} & kinds, f"the read was not even seen: {kinds}"
    assert recorder.changes == 0, [(e.event_type, e.src_path) for e in recorder.events]
