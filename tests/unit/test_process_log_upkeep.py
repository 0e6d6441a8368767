"""The process runtime rotates its logs in maintain(), which the loop calls on each resync; list_managed is a query."""

from __future__ import annotations

from pathlib import Path

from supervisor.runtime.process.runtime import ProcessRuntime

from .helpers import exited_process_record


def _runtime_with_a_big_log(tmp_path: Path) -> tuple[ProcessRuntime, Path]:
    log = tmp_path / "m.log"
    log.write_bytes(b"x" * 100)
    exited_process_record(tmp_path, log)
    return ProcessRuntime(state_dir=tmp_path, lock_path=tmp_path / "lock.json", log_max_bytes=10), log


def test_list_managed_leaves_log_files_untouched(tmp_path: Path) -> None:
    rt, log = _runtime_with_a_big_log(tmp_path)
    try:
        listed = rt.list_managed()
    finally:
        rt.close()
    assert [c.id for c in listed] == ["p1"]
    assert log.read_bytes() == b"x" * 100 and not (tmp_path / "m.log.1").exists()


def test_maintain_rotates_a_log_past_its_size(tmp_path: Path) -> None:
    rt, log = _runtime_with_a_big_log(tmp_path)
    try:
        rt.maintain()
    finally:
        rt.close()
    assert log.read_bytes() == b"" and (tmp_path / "m.log.1").read_bytes() == b"x" * 100
