"""What the runtime says exists, as values handed to the planner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ContainerStatus = Literal["created", "running", "paused", "restarting", "removing", "exited", "dead"]


@dataclass(frozen=True)
class ObservedContainer:
    id: str
    name: str
    model: str                 # io.llama-supervisor.model label
    config_hash: str           # io.llama-supervisor.config-hash label
    status: ContainerStatus
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str = ""       # Docker's State.StartedAt, as given
    image_id: str = ""
    host_port: int | None = None   # the published port as bound now (the engine's pick when the spec says 0)
    held: bool = False         # Docker standby: started up to its gate, llama-server not exec'd (status "exited")
