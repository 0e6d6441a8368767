"""A model's status as the control socket and `llama-supervisorctl status` show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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

    def to_json(self) -> dict[str, object]:
        return asdict(self)
