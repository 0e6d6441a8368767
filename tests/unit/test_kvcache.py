"""KV caches kept across stops (issue 17): the pure decisions (core/kvcache.py), the files (daemon/kvstore.py),
the saves and restores against a fake llama-server slot API (httpx.MockTransport), and what render makes of
kv_cache (the flag, the read-write mount, the key, SWA)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from supervisor.control.api import NullMetrics
from supervisor.core import kvcache
from supervisor.core.kvcache import Entry, SlotState
from supervisor.core.lifecycle import Lifecycle
from supervisor.core.spec import DesiredModel, KvCache
from supervisor.daemon.kvkeeper import KvKeeper
from supervisor.daemon.kvstore import KvStore
from supervisor.daemon.state import Slot
from supervisor.artifacts.gguf import GgufFacts
from supervisor.artifacts.lock import ImageLock
from supervisor.manifest.loader import load_text
from supervisor.render.desired import render_all

from .fakes import FakeClock
from .helpers import desired, observed
from .test_render import FLAGS, HOST, model, record


# --- pure -----------------------------------------------------------------------------------------------

def e(model: str, slot: int, size: int, used: float, key: str = "k") -> Entry:
    return Entry(model, key, slot, size, 10, used)


def test_evict_removes_the_least_recently_used_past_each_models_bound_then_the_total() -> None:
    files = [e("a", 0, 40, 1.0), e("a", 1, 40, 3.0), e("a", 2, 40, 5.0), e("b", 0, 50, 2.0), e("c", 0, 30, 4.0)]
    # a's bound 80: its oldest (used 1.0) goes; then 40+40+50+30 = 160 > total 120: the oldest left, b's, goes
    gone = kvcache.evict(files, per_model={"a": 80, "b": 100, "c": 100}, total=120)
    assert gone == [files[0], files[3]]
    assert kvcache.evict(files, per_model={"a": 1000, "b": 1000, "c": 1000}, total=1000) == []
    # a model without a bound keeps nothing (its manifest turned the cache off, or it is gone)
    assert kvcache.evict(files, per_model={"a": 1000, "b": 1000}, total=1000) == [files[4]]


def test_only_names_the_daemon_chooses_are_slot_files() -> None:
    assert kvcache.slot_of(kvcache.final_name(3)) == 3
    for bad in ("slot3.tmp", "slot03.bin", "../slot1.bin", "slot1.bin.x", "slot9999.bin", "x.bin", ""):
        assert kvcache.slot_of(bad) is None, bad


def test_slots_worth_saving_hold_a_prompt_and_are_idle() -> None:
    body = [{"id": 0, "n_prompt_tokens": 2204, "is_processing": False},
            {"id": 1, "n_prompt_tokens": 0, "is_processing": False},
            {"id": 2, "n_prompt_tokens": 9, "is_processing": True},
            {"id": "3", "n_prompt_tokens": 9}, {"id": True, "n_prompt_tokens": 5}, "junk",
            {"id": 4}]
    slots = kvcache.parse_slots(body)
    assert [s.id for s in slots] == [0, 1, 2, 4]
    assert kvcache.to_save(slots) == [SlotState(0, 2204, False)]
    assert kvcache.parse_slots({"error": "x"}) == []


def test_a_save_expected_to_overrun_the_deadline_is_skipped() -> None:
    assert kvcache.fits(2000, None, 0.5)                 # no rate seen yet: tried, bounded by the deadline
    assert kvcache.fits(2000, 0.0001, 0.5)               # 0.2 s expected
    assert not kvcache.fits(2000, 0.001, 0.5)            # 2 s expected
    assert not kvcache.fits(1, None, 0.0)


# --- the store ------------------------------------------------------------------------------------------

def kv_for(root: Path, model: str = "m", key: str = "abc", max_bytes: int = 1 << 20) -> KvCache:
    return KvCache(keep=True, max_bytes=max_bytes, key=key, dir=str(root / model / key), note="kept")


def server_writes(kv: KvCache, slot: int, data: bytes) -> None:
    """What llama-server does on a save: the file under the temp name the daemon gave it."""
    (Path(kv.dir) / kvcache.SLOT_DIR / kvcache.temp_name(slot)).write_bytes(data)


def test_a_checked_save_is_renamed_recorded_and_restorable(tmp_path: Path) -> None:
    store = KvStore(tmp_path, wall=FakeClock(50.0))
    kv = kv_for(tmp_path)
    store.prepare(kv)
    server_writes(kv, 0, b"x" * 100)
    entry = store.commit("m", kv, 0, n_tokens=7, n_written=100)
    assert entry == Entry("m", "abc", 0, 100, 7, 50.0)
    slots = Path(kv.dir) / kvcache.SLOT_DIR
    assert sorted(p.name for p in slots.iterdir()) == ["slot0.bin"]
    [checked] = store.restorable("m", kv)
    assert checked.path == slots / "slot0.bin" and not checked.problem
    assert store.usage() == {"m": (7, 100)}
    # a new daemon finds it again from the index
    assert KvStore(tmp_path).usage() == {"m": (7, 100)}


def test_a_save_whose_size_differs_from_what_the_server_reported_is_discarded(tmp_path: Path) -> None:
    store = KvStore(tmp_path)
    kv = kv_for(tmp_path)
    store.prepare(kv)
    server_writes(kv, 0, b"x" * 60)             # cut short
    assert store.commit("m", kv, 0, n_tokens=7, n_written=100) is None
    assert list((Path(kv.dir) / kvcache.SLOT_DIR).iterdir()) == []
    assert store.restorable("m", kv) == []


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.write_bytes(b"x" * 50), "truncated"),
    (lambda p: p.write_bytes(b"y" * 100), "corrupt"),
    (lambda p: p.unlink(), "missing"),
])
def test_a_damaged_file_is_not_restored_and_is_removed(tmp_path: Path, damage: object, why: str) -> None:
    store = KvStore(tmp_path)
    kv = kv_for(tmp_path)
    store.prepare(kv)
    server_writes(kv, 0, b"x" * 100)
    assert store.commit("m", kv, 0, n_tokens=7, n_written=100) is not None
    path = Path(kv.dir) / kvcache.SLOT_DIR / "slot0.bin"
    damage(path)  # type: ignore[operator]
    [checked] = store.restorable("m", kv)
    assert checked.path is None and checked.problem.startswith(why)
    assert not path.exists() and store.usage() == {}
    assert store.restorable("m", kv) == []


def test_prepare_removes_half_written_and_planted_files(tmp_path: Path) -> None:
    store = KvStore(tmp_path)
    kv = kv_for(tmp_path)
    store.prepare(kv)
    slots = Path(kv.dir) / kvcache.SLOT_DIR
    server_writes(kv, 1, b"half")                       # a save a crash cut short
    (slots / "slot2.bin").write_bytes(b"planted")       # a final name the index does not record
    (slots / "other").write_bytes(b"?")
    store.prepare(kv)
    assert list(slots.iterdir()) == []
    assert store.restorable("m", kv) == []
    assert oct(slots.stat().st_mode & 0o777) == "0o700"


def test_commits_evict_the_least_recently_used_files_per_model_and_in_total(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    store = KvStore(tmp_path, total_bytes=250, wall=clock)
    store.set_bounds({"a": 200, "b": 200})
    a1, a2, b = kv_for(tmp_path, "a", "k1", 200), kv_for(tmp_path, "a", "k2", 200), kv_for(tmp_path, "b", "k", 200)
    for kv in (a1, a2, b):
        store.prepare(kv)
    for kv, slot in ((a1, 0), (a1, 1), (a2, 0)):      # a: 3 x 90 > its 200
        clock.advance(1)
        server_writes(kv, slot, b"x" * 90)
        store.commit("a", kv, slot, n_tokens=1, n_written=90)
    assert store.usage() == {"a": (2, 180)}
    assert not (Path(a1.dir) / kvcache.SLOT_DIR / "slot0.bin").exists()
    clock.advance(1)
    server_writes(b, 0, b"x" * 90)                     # 270 > total 250: a's oldest left goes
    store.commit("b", b, 0, n_tokens=1, n_written=90)
    assert store.usage() == {"a": (1, 90), "b": (1, 90)}
    assert (Path(a2.dir) / kvcache.SLOT_DIR / "slot0.bin").exists()
    store.set_bounds({"b": 200})                        # a's cache turned off: its files go
    assert store.usage() == {"b": (1, 90)}


# --- saves and restores through the slot API --------------------------------------------------------------

class FakeServer:
    """llama-server's slot API: GET /slots, POST /slots/<id>?action=save|restore, writing into the kv dir."""

    def __init__(self, kv: KvCache, slots: list[dict[str, object]], clock: FakeClock, save_s: float = 0.01) -> None:
        self.kv, self.slots, self.clock, self.save_s = kv, slots, clock, save_s
        self.calls: list[str] = []
        self.restore_error = ""

    def handle(self, r: httpx.Request) -> httpx.Response:
        self.calls.append(f"{r.method} {r.url.path}?{r.url.query.decode()}")
        if r.url.path == "/slots":
            return httpx.Response(200, json=self.slots)
        sid = int(r.url.path.rsplit("/", 1)[1])
        name = json.loads(r.content)["filename"]
        if r.url.params["action"] == "save":
            self.clock.advance(self.save_s)
            data = b"kv" * 50
            (Path(self.kv.dir) / kvcache.SLOT_DIR / name).write_bytes(data)
            n = next((s.get("n_prompt_tokens") for s in self.slots if s.get("id") == sid), 11)
            return httpx.Response(200, json={"id_slot": sid, "filename": name, "n_saved": n, "n_written": len(data)})
        if self.restore_error:
            return httpx.Response(400, json={"error": {"message": self.restore_error}})
        return httpx.Response(200, json={"id_slot": sid, "filename": name, "n_restored": 11, "n_read": 100})


class Recorded(NullMetrics):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, int]] = []

    def kv_cache(self, model: str, op: str, outcome: str, nbytes: int, seconds: float) -> None:
        self.seen.append((model, op, outcome, nbytes))


def rig(tmp_path: Path, slots: list[dict[str, object]], *, save_s: float = 0.01
        ) -> tuple[KvKeeper, FakeServer, DesiredModel, Recorded]:
    clock = FakeClock()
    d = replace(desired("m"), kv=kv_for(tmp_path))
    server = FakeServer(d.kv, slots, clock, save_s)
    metrics = Recorded()
    keeper = KvKeeper(KvStore(tmp_path), {"m": Slot(d, Lifecycle("m", health=d.health, restart=d.restart, rng=random.Random(0)))}, metrics,
                      client=httpx.Client(transport=httpx.MockTransport(server.handle)), clock=clock)
    keeper.store.set_bounds({"m": 1 << 20})
    keeper.prepare("m")
    return keeper, server, d, metrics


def test_a_stop_saves_each_idle_slot_holding_a_prompt_and_the_next_start_restores_it(tmp_path: Path) -> None:
    keeper, server, d, metrics = rig(tmp_path, [{"id": 0, "n_prompt_tokens": 11}, {"id": 1, "n_prompt_tokens": 0}])
    spent = keeper.save("m", observed(d), 10.0)
    assert 0 < spent < 10.0
    assert server.calls == ["GET /slots?", "POST /slots/0?action=save"]
    assert keeper.usage() == {"m": (11, 100)}
    server.calls.clear()
    keeper.restore("m", "c-m", "http://127.0.0.1:8081/health")        # not a container the executor started
    assert server.calls == []
    keeper.started("m", "c-m")
    keeper.restore("m", "c-m", "http://127.0.0.1:8081/health")
    assert server.calls == ["POST /slots/0?action=restore"]
    keeper.restore("m", "c-m", "http://127.0.0.1:8081/health")        # once per start
    assert len(server.calls) == 1
    assert metrics.seen == [("m", "save", "ok", 100), ("m", "restore", "ok", 100)]


def test_no_save_for_a_container_of_another_config(tmp_path: Path) -> None:
    keeper, server, d, _ = rig(tmp_path, [{"id": 0, "n_prompt_tokens": 11}])
    assert keeper.save("m", observed(d, config_hash="0" * 64), 10.0) == 0.0
    assert server.calls == []


def test_a_save_that_would_overrun_the_stop_timeout_is_skipped(tmp_path: Path) -> None:
    keeper, server, d, metrics = rig(tmp_path, [{"id": 0, "n_prompt_tokens": 11}, {"id": 1, "n_prompt_tokens": 11}],
                                     save_s=3.0)
    # budget (10 - 1) / 2 = 4.5 s: the first save takes 3 s, so the second (3 s expected) is skipped
    spent = keeper.save("m", observed(d), 10.0)
    assert server.calls == ["GET /slots?", "POST /slots/0?action=save"]
    assert spent == pytest.approx(3.0) and spent <= 10.0 - 1.0
    assert [m[2] for m in metrics.seen] == ["ok", "skipped"]


def test_a_small_save_does_not_make_a_large_one_look_slow(tmp_path: Path) -> None:
    """A save costs a fixed part beside its size: 30 ms for 2 tokens once read as 15 ms a token, and the next
    1,347-token save, 20 s expected with 4.5 s left, was skipped (the swaps-kv bench lost 4 of 10 saves)."""
    keeper, server, d, metrics = rig(tmp_path, [{"id": 0, "n_prompt_tokens": 2}], save_s=0.03)
    keeper.save("m", observed(d), 10.0)
    server.slots = [{"id": 0, "n_prompt_tokens": 1347}]
    keeper.save("m", observed(d), 10.0)
    assert [m[2] for m in metrics.seen] == ["ok", "ok"]
    assert kvcache.save_rate(0.03, 2) == 0.0 and kvcache.save_rate(1.25, 1000) == pytest.approx(0.001)


def test_a_restore_the_server_refuses_costs_only_the_cache(tmp_path: Path) -> None:
    keeper, server, d, metrics = rig(tmp_path, [{"id": 0, "n_prompt_tokens": 11}])
    keeper.save("m", observed(d), 10.0)
    server.restore_error = "Unable to restore slot: invalid slot save file"
    keeper.started("m", "c-m")
    keeper.restore("m", "c-m", "http://127.0.0.1:8081/health")
    assert keeper.usage() == {}
    assert list((Path(d.kv.dir) / kvcache.SLOT_DIR).iterdir()) == []
    assert metrics.seen[-1][:3] == ("m", "restore", "failed")


def test_a_daemon_that_cannot_keep_caches_neither_saves_nor_restores(tmp_path: Path) -> None:
    keeper, server, d, _ = rig(tmp_path, [{"id": 0, "n_prompt_tokens": 11}])
    keeper.off_reason = "off: not root"
    assert keeper.save("m", observed(d), 10.0) == 0.0
    keeper.started("m", "c-m")
    keeper.restore("m", "c-m", "http://127.0.0.1:8081/health")
    assert server.calls == []


# --- render -----------------------------------------------------------------------------------------------

KV_FLAGS = FLAGS | {"--slot-save-path", "--swa-full", "--no-slots"}
KV_LOCK = ImageLock({v: record(v, KV_FLAGS) for v in ("cpu-generic", "cpu-avx2", "cpu-avx512", "cuda")})
SWA = GgufFacts("gemma3", 18, 640, 4, 1, 256, 256, 32768, sliding_window=512)
DENSE = replace(SWA, architecture="llama", sliding_window=0)


def rendered(text: str, facts: GgufFacts | None = DENSE, lock: ImageLock = KV_LOCK) -> DesiredModel:
    desired_models, problems = render_all(load_text(text, name="m.yaml"), lock, HOST, file_sizes={},
                                          facts={"m": facts})
    assert problems == []
    return desired_models["m"]


def test_an_on_demand_model_keeps_its_cache_in_a_directory_of_its_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_SUPERVISOR_KV_DIR", str(tmp_path))
    d = rendered(model(tail="lifecycle: on-demand\n"))
    assert d.kv.keep and d.kv.note == "kept" and d.kv.dir == str(tmp_path / "m" / d.kv.key)
    argv = d.spec.argv
    assert argv[argv.index("--slot-save-path") + 1] == "/kv" and "--swa-full" not in argv
    [rw] = [m for m in d.spec.mounts if not m.read_only]
    assert (rw.source, rw.target) == (f"{d.kv.dir}/slots", "/kv")
    other = rendered(model(tail="lifecycle: on-demand\n").replace("port: 8081", "port: 8081\n  ctx_size: 1024"))
    assert other.kv.key != d.kv.key                   # a changed model never finds the old files
    assert rendered(model(tail="lifecycle: on-demand\n")).kv.key == d.kv.key


def test_a_sliding_window_model_keeps_its_cache_with_swa_full() -> None:
    d = rendered(model(tail="lifecycle: on-demand\n"), facts=SWA)
    assert d.kv.keep and "--swa-full" in d.spec.argv and "sliding-window" in d.kv.note
    no_swa_full = ImageLock({v: record(v, KV_FLAGS - {"--swa-full"}) for v in ("cpu-avx512",)})
    d = rendered(model(tail="lifecycle: on-demand\n"), facts=SWA, lock=no_swa_full)
    assert not d.kv.keep and "--slot-save-path" not in d.spec.argv and "no --swa-full" in d.kv.note


def test_the_cache_is_off_where_the_manifest_or_the_model_says_so() -> None:
    assert not rendered(model()).kv.keep                                    # lifecycle always
    assert rendered(model(tail="kv_cache: {keep: true}\n")).kv.keep
    off = rendered(model(tail="lifecycle: on-demand\nkv_cache: {keep: false}\n"))
    assert not off.kv.keep and all(m.read_only for m in off.spec.mounts) and "--slot-save-path" not in off.spec.argv
    assert "--no-slots" in rendered(model(extra="[--no-slots]", tail="lifecycle: on-demand\n")).kv.note
    assert rendered(model(tail="lifecycle: on-demand\nkv_cache: {max_size: 2g}\n")).kv.max_bytes == 2 << 30


def test_operators_cannot_name_the_cache_directory() -> None:
    _, problems = render_all(load_text(model(extra="[--slot-save-path, /tmp]"), name="m.yaml"), KV_LOCK, HOST,
                             file_sizes={})
    assert any("--slot-save-path" in p and "kv_cache" in p for p in problems), problems


def test_a_daemon_that_keeps_no_cache_renders_no_cache_directory() -> None:
    """The daemon's reason to keep none reaches render: no flag, no read-write mount (no one would prepare it,
    and a bind mount's missing source fails the create), no --swa-full; the manifest's own `off` still says so."""
    desired_models, problems = render_all(load_text(model(tail="lifecycle: on-demand\n"), name="m.yaml"), KV_LOCK,
                                          HOST, file_sizes={}, facts={"m": SWA}, kv_off="off: the daemon's reason")
    assert problems == []
    d = desired_models["m"]
    assert not d.kv.keep and d.kv.note == "off: the daemon's reason" and d.kv.dir == ""
    assert not {"--slot-save-path", "--swa-full"} & set(d.spec.argv) and all(m.read_only for m in d.spec.mounts)
    desired_models, _ = render_all(load_text(model(tail="lifecycle: on-demand\nkv_cache: {keep: false}\n"),
                                             name="m.yaml"), KV_LOCK, HOST, file_sizes={}, kv_off="off: why")
    assert desired_models["m"].kv.note == "off (kv_cache.keep: false)"


def test_the_isolated_reader_hands_the_daemons_reason_to_render(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.artifacts.lock import write_lock
    from supervisor.cli.daemon import make_loader

    monkeypatch.setenv("LLAMA_SUPERVISOR_KV_DIR", str(tmp_path / "kv"))
    d = tmp_path / "manifests"
    d.mkdir()
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (d / "m.yaml").write_text(model(tail="lifecycle: on-demand\n").replace("/m/m.gguf", str(tmp_path / "m.gguf")))
    lock = tmp_path / "lock.json"
    write_lock(lock, KV_LOCK)
    assert make_loader(d, lock, isolated=True)()["m"].kv.keep
    off = make_loader(d, lock, isolated=True, kv_off="off: why")()["m"]
    assert not off.kv.keep and off.kv.note == "off: why" and "--slot-save-path" not in off.spec.argv
    assert off == make_loader(d, lock, kv_off="off: why")()["m"]


def test_the_process_runtime_keeps_no_cache_where_its_servers_uid_cannot_reach_it(tmp_path: Path) -> None:
    from supervisor.cli.daemon import _kv_unreachable, kv_wiring

    why = _kv_unreachable(tmp_path / "state" / "kv", 65532, 65532)      # pytest's base directory is 0700
    assert why.startswith("off: uid 65532") and str(tmp_path / "state" / "kv") in why and "chmod o+x" in why
    assert _kv_unreachable(Path("/usr/share/no-such-dir/kv"), 65532, 65532) == ""   # its nearest: /usr/share
    assert kv_wiring(None, "process") == {"kv_off_reason": "off: --kv-cache-max none"}
