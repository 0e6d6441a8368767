"""Watches the manifest directory (watchdog) and posts one ManifestsChanged per burst of changes.

Editors save by writing a temporary file and renaming it over the original, so
every create / modify / move / delete of a YAML file counts, and a burst within
the debounce window (~200 ms) becomes a single re-read. Open and close events
are ignored: the loop's own reads would otherwise trigger reloads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from supervisor.core.events import Event, ManifestsChanged

log = structlog.get_logger("supervisor.daemon.watcher")

_KINDS = frozenset({"created", "modified", "moved", "deleted"})
_SUFFIXES = (".yaml", ".yml")


def relevant(event: FileSystemEvent) -> bool:
    if event.event_type not in _KINDS:
        return False
    paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
    return any(p.endswith(_SUFFIXES) for p in paths)


class _Handler(FileSystemEventHandler):
    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if relevant(event):
            self._on_change()


class ManifestWatcher:
    def __init__(self, directory: Path, post: Callable[[Event], None], *, debounce_s: float = 0.2) -> None:
        self.directory = directory
        self._post = post
        self._debounce_s = debounce_s
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._observer = Observer()
        self._observer.daemon = True

    def start(self) -> None:
        self._observer.schedule(_Handler(self._changed), str(self.directory), recursive=False)
        self._observer.start()
        log.info("watching manifests", directory=str(self.directory), debounce_s=self._debounce_s)

    def _changed(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self._debounce_s, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
        self._post(ManifestsChanged(origin="watcher"))

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        self._observer.stop()
        self._observer.join(5)
