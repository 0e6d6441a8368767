"""KV caches kept across stops: the saves before a graceful stop and the restores before a model takes
requests, through llama-server's slot API (`GET /slots`, `POST /slots/<id>?action=save|restore`).

- `prepare` (executor, before a create or start in place): the cache directory, owned by the server's uid.
- `save` (executor, before a graceful stop of a model whose config is unchanged): each idle slot holding a
  prompt, within a deadline inside the stop timeout; a save expected to overrun it is skipped, one that
  overruns is abandoned (its temp file is removed at the next start), and the stop goes on either way.
- `restore` (a probe thread, on the first healthy probe of a container the executor just started, before
  that probe's result reaches the loop: the model turns RUNNING, and the gateway routes to it, after).
  A file that fails its check or its restore costs only the cache: it is removed, the reason logged, and
  the model served cold.

The files and their checks are `KvStore`'s (kvstore.py); the decisions are pure (core/kvcache.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import structlog

from supervisor import loopback
from supervisor.control.api import MetricsSink
from supervisor.core import kvcache
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import DesiredModel
from supervisor.daemon.health import health_url
from supervisor.daemon.kvstore import KvStore
from supervisor.daemon.state import Slot

log = structlog.get_logger("supervisor.daemon.kv")

API_KEY_TARGET = "/run/secrets/api-key"
MAX_SLOTS_BYTES = 4 * 1024 * 1024       # GET /slots with 256 slots and their prompts' text
MAX_ANSWER_BYTES = 64 * 1024
MIN_STOP_S = 1.0                        # what a save leaves the graceful stop, at least


class KvKeeper:
    def __init__(self, store: KvStore, slots: Mapping[str, Slot], metrics: MetricsSink, *,
                 client: httpx.Client | None = None, clock: Callable[[], float] = time.monotonic,
                 off_reason: str = "") -> None:
        self.store = store
        self.slots = slots                   # the loop's: read (never changed) here
        self.metrics = metrics
        self.off_reason = off_reason         # why no model keeps its cache on this daemon ('' when they may)
        # no idle connection left behind: the graceful stop follows the save at once, and llama-server's exit
        # waits about 0.1 s for each idle keep-alive connection (health.py)
        self._client = client or httpx.Client(trust_env=False, limits=httpx.Limits(max_keepalive_connections=0),
                                              verify=loopback.tls_context())
        self._clock = clock
        self._lock = threading.Lock()
        self._fresh: dict[str, str] = {}     # model -> container just started, restore due at its first healthy probe
        self._s_per_token: dict[str, float] = {}    # model -> the rate its last save showed (kvcache.save_rate)

    def _kv_of(self, model: str) -> DesiredModel | None:
        slot = self.slots.get(model)
        if slot is None or not slot.desired.kv.keep or self.off_reason:
            return None
        return slot.desired

    # --- the loop's (loop thread) ---------------------------------------------------------------------

    def bound(self, slots: Mapping[str, Slot]) -> None:
        """After a manifest read: each model's bound (a model that keeps no cache, or is gone, keeps no files)."""
        self.store.set_bounds({n: s.desired.kv.max_bytes for n, s in slots.items()
                               if s.desired.kv.keep and not self.off_reason})

    def usage(self) -> dict[str, tuple[int, int]]:
        """model -> (tokens, bytes) kept on disk."""
        return self.store.usage()

    # --- the executor's hooks (loop thread) -----------------------------------------------------------

    def prepare(self, model: str) -> None:
        """Before a create or a start in place: the slots directory. A failure costs only the cache."""
        d = self._kv_of(model)
        if d is None:
            return
        try:
            self.store.prepare(d.kv)
        except OSError as e:
            log.warning("kv cache: directory not ready; this start keeps no cache", model=d.name, dir=d.kv.dir,
                        error=e.strerror or str(e))

    def started(self, model: str, container_id: str) -> None:
        if self._kv_of(model) is not None:
            with self._lock:
                self._fresh[model] = container_id

    def save(self, model: str, current: ObservedContainer | None, stop_timeout_s: float) -> float:
        """Save the slots holding a prompt before a graceful stop; returns the seconds it took (the stop
        gets what is left of its timeout). Never raises."""
        d = self._kv_of(model)
        if d is None or current is None or current.status != "running" or current.config_hash != d.spec.config_hash():
            return 0.0
        port = current.host_port or d.spec.host_port
        if not port:
            return 0.0
        t0 = self._clock()
        deadline = t0 + max(0.0, stop_timeout_s - MIN_STOP_S) / 2
        base = _base(d.spec.host_ip, port)
        headers = _auth(d)
        try:
            r = self._client.get(f"{base}/slots", headers=headers, timeout=max(0.1, min(2.0, deadline - t0)))
            slots = kvcache.parse_slots(r.json() if r.status_code == 200 and len(r.content) <= MAX_SLOTS_BYTES
                                        else None)
            if r.status_code != 200:
                log.warning("kv cache: GET /slots failed; nothing saved", model=model, status=r.status_code)
        except (httpx.HTTPError, ValueError) as e:
            log.warning("kv cache: GET /slots failed; nothing saved", model=model, error=str(e) or type(e).__name__)
            slots = []
        for s in kvcache.to_save(slots):
            left = deadline - self._clock()
            if not kvcache.fits(s.n_tokens, self._s_per_token.get(model), left):
                log.warning("kv cache: save skipped; it would not end before the stop's deadline", model=model,
                            slot=s.id, tokens=s.n_tokens, left_s=round(left, 3))
                self.metrics.kv_cache(model, "save", "skipped", 0, 0.0)
                continue
            self._save_one(d, base, headers, s, left)
        return self._clock() - t0

    def _save_one(self, d: DesiredModel, base: str, headers: dict[str, str], s: kvcache.SlotState,
                  left: float) -> None:
        t = self._clock()
        try:
            r = self._client.post(f"{base}/slots/{s.id}", params={"action": "save"}, headers=headers,
                                  json={"filename": kvcache.temp_name(s.id)}, timeout=left)
            body = r.json() if len(r.content) <= MAX_ANSWER_BYTES else {}
        except (httpx.HTTPError, ValueError) as e:
            log.warning("kv cache: save failed", model=d.name, slot=s.id, error=str(e) or type(e).__name__)
            self.metrics.kv_cache(d.name, "save", "failed", 0, self._clock() - t)
            return
        n_saved, n_written = body.get("n_saved"), body.get("n_written")
        if r.status_code != 200 or not isinstance(n_saved, int) or not isinstance(n_written, int):
            log.warning("kv cache: save refused", model=d.name, slot=s.id, status=r.status_code,
                        answer=str(body)[:200])
            self.metrics.kv_cache(d.name, "save", "failed", 0, self._clock() - t)
            return
        try:
            entry = self.store.commit(d.name, d.kv, s.id, n_tokens=n_saved, n_written=n_written)
        except OSError as e:
            log.warning("kv cache: save not kept", model=d.name, slot=s.id, error=e.strerror or str(e))
            entry = None
        took = self._clock() - t
        if entry is None:
            self.metrics.kv_cache(d.name, "save", "failed", 0, took)
            return
        if n_saved > 0:
            self._s_per_token[d.name] = kvcache.save_rate(took, n_saved)
        log.info("kv cache: saved", model=d.name, slot=s.id, tokens=n_saved, bytes=n_written,
                 ms=round(took * 1000, 1))
        self.metrics.kv_cache(d.name, "save", "ok", n_written, took)

    # --- the prober's hook (a probe thread) -----------------------------------------------------------

    def restore(self, model: str, container_id: str, url: str) -> None:
        """On a healthy probe: restore the model's files if this container was just started. Never raises."""
        with self._lock:
            if self._fresh.get(model) != container_id:
                return
            del self._fresh[model]
        d = self._kv_of(model)
        if d is None:
            return
        base = url.removesuffix("/health")
        headers = _auth(d)
        for checked in self.store.restorable(model, d.kv):
            if checked.path is None:
                self.metrics.kv_cache(model, "restore", "rejected", 0, 0.0)
                continue
            t = self._clock()
            name = checked.path.name
            try:
                r = self._client.post(f"{base}/slots/{checked.slot}", params={"action": "restore"},
                                      headers=headers, json={"filename": name}, timeout=60.0)
                body = r.json() if len(r.content) <= MAX_ANSWER_BYTES else {}
                ok = r.status_code == 200 and isinstance(body.get("n_restored"), int)
                why = "" if ok else f"HTTP {r.status_code}: {str(body.get('error', body))[:200]}"
            except (httpx.HTTPError, ValueError) as e:
                ok, why, body = False, str(e) or type(e).__name__, {}
            took = self._clock() - t
            if not ok:
                log.warning("kv cache: restore failed; served cold, file removed", model=model, slot=checked.slot,
                            reason=why)
                self.store.drop(model, d.kv, checked.slot)
                self.metrics.kv_cache(model, "restore", "failed", 0, took)
                continue
            self.store.touch(model, d.kv, checked.slot)
            n_read = body.get("n_read")
            log.info("kv cache: restored", model=model, slot=checked.slot, tokens=body.get("n_restored"),
                     bytes=n_read, ms=round(took * 1000, 1))
            self.metrics.kv_cache(model, "restore", "ok", n_read if isinstance(n_read, int) else 0, took)

    def close(self) -> None:
        self._client.close()


def _base(host_ip: str, port: int) -> str:
    return health_url(host_ip, port).removesuffix("/health")


def _auth(d: DesiredModel) -> dict[str, str]:
    """The model's own API key (llama-server asks it for /slots), read from the file the model mounts."""
    if d.api_key_file is None:
        return {}
    source = next((m.source for m in d.spec.mounts if m.target == API_KEY_TARGET), d.api_key_file)
    try:
        with open(Path(source), "rb") as f:
            key = f.read(4096).decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return {}
    return {"Authorization": f"Bearer {key[0].strip()}"} if key else {}


def owner_for(user: str) -> tuple[int, int] | None:
    """The uid:gid a server runs as when the daemon is root (who then owns the slots directory); None
    when the daemon is not root (the process runtime runs servers as the daemon itself)."""
    if os.geteuid() != 0:
        return None
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)
