"""The Docker events stream, filtered by our label, posted as typed events on the loop's queue.

Runs on its own thread. When the stream breaks (engine restart, socket error) it
reconnects with backoff, asking for events since the last one it saw, and posts a
resync Tick so the loop repairs anything that happened in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import structlog

from supervisor.core.events import ContainerAction, ContainerEvent, Event, Tick
from supervisor.runtime import DEFAULT_INSTANCE, LABEL_MODEL, owned_filter

log = structlog.get_logger("supervisor.runtime.events")

_ACTIONS = {a.value: a for a in ContainerAction if a is not ContainerAction.READY}   # READY: no engine event


def parse(raw: dict[str, Any]) -> ContainerEvent | None:
    """A Docker event as a ContainerEvent; None for the ones the loop does not care about."""
    if raw.get("Type") != "container":
        return None
    action = _ACTIONS.get(str(raw.get("Action", "")).split(":")[0])
    if action is None:
        return None
    actor = raw.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    code = attrs.get("exitCode")
    return ContainerEvent(
        action=action,
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        model=str(attrs.get(LABEL_MODEL, "")),
        exit_code=int(code) if code not in (None, "") else None,
        time_ns=int(raw.get("timeNano") or 0),
    )


class DockerEventStream:
    def __init__(
        self,
        client_factory: Callable[[], docker.DockerClient],
        post: Callable[[Event], None],
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        instance: str = DEFAULT_INSTANCE,
    ) -> None:
        self.instance = instance
        self._client_factory = client_factory
        self._post = post
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing a broken stream: nothing left to do
                pass
        self._thread.join(timeout_s)

    def _run(self) -> None:
        since: int | None = None
        backoff = self._backoff_initial_s
        first = True
        while not self._stop.is_set():
            try:
                client = self._client_factory()
                self._stream = client.api.events(
                    decode=True,
                    since=since,
                    filters={"type": "container", "label": owned_filter(self.instance),
                             "event": list(_ACTIONS)},
                )
                self.connected.set()
                if not first:
                    log.info("docker events reconnected", since=since)
                    self._post(Tick(resync=True))
                first = False
                backoff = self._backoff_initial_s
                for raw in self._stream:
                    if self._stop.is_set():
                        break
                    ev = parse(raw)
                    if ev is None:
                        continue
                    since = max(since or 0, ev.time_ns // 1_000_000_000)
                    self._post(ev)
                if not self._stop.is_set():
                    raise ConnectionError("docker events stream ended")
            except Exception as e:   # any break of the stream: reconnect with backoff
                self.connected.clear()
                if self._stop.is_set():
                    break
                if since is None:
                    since = int(time.time())
                first = False
                log.warning("docker events stream broken; reconnecting", error=str(e), retry_in_s=backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_max_s)
