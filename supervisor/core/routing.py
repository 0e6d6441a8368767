"""Where the gateway sends a model's requests, as the loop last published it."""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.core.lifecycle import State


@dataclass(frozen=True)
class Route:
    name: str
    state: State                      # serialised as State.value (the same string as State.name)
    host: str | None                  # where the model answers now (None: not running)
    port: int | None
    aliases: tuple[str, ...] = ()
    on_demand: bool = False
    enabled: bool = True              # False: stopped by the operator (always) or idle (on-demand)
    reason: str = ""                  # why it is in this state (FATAL's reason, above all)
    api_key_file: str | None = None   # the model's own key; the gateway adds it upstream
    start_timeout_s: float = 60.0
    max_queue: int = 64

    @property
    def url(self) -> str | None:
        return f"http://{self.host}:{self.port}" if self.host and self.port else None


def route_table(routes: tuple[Route, ...]) -> dict[str, Route]:
    """Every name and alias -> its route (the loader guarantees they are unique)."""
    table: dict[str, Route] = {}
    for r in routes:
        table[r.name] = r
        for alias in r.aliases:
            table.setdefault(alias, r)
    return table
