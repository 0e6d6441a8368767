"""The console's model card says when a stopped model's container is held ready (Docker standby)."""

from __future__ import annotations

from supervisor.console.views import model_view
from supervisor.core.status import ModelStatus


def _stopped(**kw: object) -> ModelStatus:
    return ModelStatus(name="chat", state="STOPPED", port=None, container_id=None, image_id=None, uptime_s=None,
                       restarts=0, last_exit_code=None, reason="idle", lifecycle="on-demand", **kw)  # type: ignore[arg-type]


def test_a_held_model_says_so_on_its_card_and_a_plain_one_does_not() -> None:
    held = dict(model_view(_stopped(held=True), None, {}, "docker")["fields"])
    assert held["Lifecycle"] == "on-demand · container held ready (standby)"
    plain = dict(model_view(_stopped(), None, {}, "docker")["fields"])
    assert plain["Lifecycle"] == "on-demand"
