"""The manifest watcher: a burst of editor writes becomes one ManifestsChanged; reads do not count."""

from __future__ import annotations

import queue
import time
from pathlib import Path

from supervisor.core.events import Event, ManifestsChanged
from supervisor.daemon.watcher import ManifestWatcher


def test_rename_save_burst_is_debounced_and_reads_are_ignored(tmp_path: Path) -> None:
    q: queue.Queue[Event] = queue.Queue()
    w = ManifestWatcher(tmp_path, q.put, debounce_s=0.2)
    w.start()
    try:
        for i in range(5):                          # an editor: write aside, rename over
            (tmp_path / ".m.yaml.swp").write_text(str(i))
            (tmp_path / "m.yaml.tmp").write_text(f"kind: model\n# {i}\n")
            (tmp_path / "m.yaml.tmp").rename(tmp_path / "m.yaml")
        ev = q.get(timeout=3)
        assert isinstance(ev, ManifestsChanged)
        time.sleep(0.5)
        assert q.empty()
        (tmp_path / "m.yaml").read_text()           # the loop's own read
        (tmp_path / "notes.txt").write_text("x")    # not a manifest
        time.sleep(0.5)
        assert q.empty()
    finally:
        w.close()
