"""A model's status as the control socket and `llama-supervisorctl status` show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# How the ctl status line and the console name a stopped model whose container is held at its gate.
HELD_TEXT = "container held ready (standby)"


@dataclass(frozen=True)
class ModelStatus:
    name: str
    state: str                       # State.name: STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL
    port: int | None
    container_id: str | None
    image_id: str | None
    uptime_s: float | None
    restarts: int
    last_exit_code: int | None
    reason: str                      # why it is in this state (exit code, OOMKilled, last log line...)
    lifecycle: str = "always"        # always | on-demand
    aliases: tuple[str, ...] = ()
    memory_counted: int | None = None    # bytes counted against the memory budget
    memory_basis: str = ""               # "limit", or how the estimate was made
    memory_used: int | None = None       # bytes the container uses now (its cgroup), when known
    idle_s: float | None = None          # seconds since its last gateway request
    ttl_left_s: float | None = None      # on-demand and running: seconds until it is stopped when idle
    inflight: int = 0                    # gateway requests in flight
    waiting: int = 0                     # gateway requests waiting for it to be ready
    kv_tokens: int | None = None         # KV cache kept on disk across stops: tokens (None: the model keeps none)
    kv_bytes: int | None = None          # ... and bytes
    kv_note: str = ""                    # whether its KV cache is kept across stops, and why not
    swaps: int = 0                       # on-demand starts that waited for other models to make room
    swap_wait_s: float | None = None     # how long the oldest request waited at the last of them
    failures: int = 0                    # consecutive failed starts (FATAL at max_failures)
    max_failures: int = 0                # the manifest's restart.max_failures
    retry_in_s: float | None = None      # BACKOFF: seconds until the next try
    verified: str = ""                   # what this daemon checked before creating the container ('' if none)
    handover: str = ""                   # a start-first recreate under way: the new container starting, or the old draining
    load_s: float | None = None          # its last start that this daemon made: started -> seen healthy, seconds
    held: bool = False                   # stopped, its container held ready at its gate (Docker standby)

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelStatus:
        """The inverse of to_json; fields a daemon of another version did not send keep their defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["aliases"] = tuple(values.get("aliases") or ())
        return cls(**values)
