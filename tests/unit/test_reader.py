"""The manifest reader child process (supervisor.render.reader): same models as an in-process read,
the same file:line problems, and a daemon that never imports pydantic or PyYAML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cli.daemon import make_loader
from supervisor.core.spec import GpuRequest
from supervisor.render import reader
from supervisor.errors import ManifestError
from supervisor.artifacts.lock import write_lock
from supervisor.manifest import load_text
from supervisor.render.desired import render_all

from .test_render import GPU_HOST, LOCK, model

CPU_VARIANTS = ("cpu-generic", "cpu-avx2", "cpu-avx512")


def test_encode_decode_round_trips_every_field() -> None:
    desired, problems = render_all(load_text(model(profile="auto", tail="logs:\n  max_files: 2\n"), name="m.yaml"),
                                   LOCK, GPU_HOST, file_sizes={})
    assert problems == []
    m = desired["m"]
    assert m.spec.gpu == GpuRequest("nvidia")                         # a GPU request, tuples, an enum
    assert reader.decode(json.loads(json.dumps(reader.encode(m)))) == m


def test_the_child_reads_what_the_daemon_would_read_in_process(tmp_path: Path) -> None:
    d = tmp_path / "manifests"
    d.mkdir()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (d / "m.yaml").write_text(model().replace("/m/m.gguf", str(gguf)))
    lock = tmp_path / "lock.json"
    write_lock(lock, LOCK)
    assert make_loader(d, lock, isolated=True)() == make_loader(d, lock)()
    (d / "bad.yaml").write_text("kind: model\nname: x\nserver: {port: 1}\n")
    with pytest.raises(ManifestError) as e:
        make_loader(d, lock, isolated=True)()
    assert any(p.startswith(f"{d / 'bad.yaml'}:1: ") for p in e.value.problems), e.value.problems


def test_the_daemon_side_imports_neither_pydantic_nor_yaml(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from supervisor.cli.daemon import make_loader; "
        "import supervisor.daemon.loop, supervisor.daemon.executor, supervisor.control.server, supervisor.daemon.health; "
        f"load = make_loader(Path({str(tmp_path)!r}), Path({str(tmp_path / 'lock.json')!r}), isolated=True); "
        "load(); print(sorted(m for m in ('pydantic', 'yaml', 'supervisor.render.desired') if m in sys.modules))"
    )
    write_lock(tmp_path / "lock.json", LOCK)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out


def test_the_reader_deadline_is_within_the_systemd_watchdog() -> None:
    """Issue 15, item 7: the loop waits for the reader; a 60 s deadline under WatchdogSec=30 let systemd kill it."""
    from supervisor.daemon import sdnotify
    from supervisor.render.reader import READ_TIMEOUT_S, read_timeout_s

    env = {"WATCHDOG_USEC": "30000000"}                                  # WatchdogSec=30
    assert read_timeout_s(sdnotify.watchdog_interval_s(env)) == 15.0     # half of it: the loop pings, then waits
    assert read_timeout_s(sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "600000000"})) == READ_TIMEOUT_S
    assert read_timeout_s(sdnotify.watchdog_interval_s({})) == READ_TIMEOUT_S


def test_the_loop_pings_the_watchdog_right_before_a_read() -> None:
    import queue
    import random

    from supervisor.daemon.loop import Supervisor

    from .fakes import FakeClock, FakeNotifier, FakeProber, FakeRuntime, FakeVerifier

    class Recording(FakeNotifier):
        def watchdog(self) -> None:
            self.messages.append("WATCHDOG=1")

    notifier = Recording()
    seen: list[list[str]] = []

    def load() -> dict[str, object]:
        seen.append(list(notifier.messages))
        return {}

    sup = Supervisor(events=queue.Queue(), runtime=FakeRuntime(), verifier=FakeVerifier(), load_desired=load,
                     prober=FakeProber(), notifier=notifier, clock=FakeClock(), rng=random.Random(1))
    sup._reload(apply=True, origin="start")
    sup._reload(apply=True, origin="watcher")
    assert [m[-1] for m in seen] == ["WATCHDOG=1", "WATCHDOG=1"]


def test_the_child_renders_against_the_lock_view_the_runtime_adapter_names(tmp_path: Path) -> None:
    """The process runtime's adapter names the `binaries` view: the reader child renders each variant as its
    host binary, as an in-process read does; the Docker adapter's `images` view renders the image."""
    from supervisor.errors import ConfigError

    from .test_process_spec import binary

    d = tmp_path / "manifests"
    d.mkdir()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (d / "m.yaml").write_text(model().replace("/m/m.gguf", str(gguf)))
    lock = tmp_path / "lock.json"
    both = LOCK
    for variant in CPU_VARIANTS:       # the host picks one of them (profile auto): each has its binary
        both = both.with_binary(binary(variant))
    write_lock(lock, both)
    as_process = make_loader(d, lock, isolated=True, lock_view="binaries")()
    as_docker = make_loader(d, lock, isolated=True, lock_view="images")()
    assert as_process == make_loader(d, lock, lock_view="binaries")()
    picked = next(v for v in CPU_VARIANTS if both.get(v).image_id == as_docker["m"].spec.image_id)  # type: ignore[union-attr]
    assert as_process["m"].spec.image_id == both.for_process().get(picked).image_id  # type: ignore[union-attr]
    assert as_docker == make_loader(d, lock, isolated=True)() and as_docker["m"].spec.image_id != as_process["m"].spec.image_id
    assert both.view("images") is both and both.view("binaries") == both.for_process()
    with pytest.raises(ConfigError, match="use one of images, binaries"):
        both.view("podman")  # type: ignore[arg-type]
