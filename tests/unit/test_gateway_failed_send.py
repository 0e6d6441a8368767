"""After a send that failed, the gateway waits for the daemon to see what it met (the route leaving RUNNING),
not for a fixed pause: the request goes to the restarted model the moment it is RUNNING, and never a
second time to the dead one; a model whose route does not change (still up) is sent again after the wait."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import httpx

from supervisor.core.commands import Readiness
from supervisor.core.lifecycle import State
from supervisor.core.routing import Route, route_table
from tests.unit.test_gateway_app import RUNNING, FakeBackend, client, ok, post

STARTING = Route("m", State.STARTING, "127.0.0.1", 9001, aliases=("m-alias",), start_timeout_s=5.0)
UP = Route("m", State.RUNNING, "127.0.0.1", 9001, aliases=("m-alias",), start_timeout_s=5.0)


class RestartingBackend(FakeBackend):
    """The loop's side of a crash: `exited()` publishes the model STARTING, `healthy()` RUNNING again and
    answers the requests that waited for it."""

    def __init__(self) -> None:
        super().__init__(UP)
        self.waiting: list[Future[Readiness]] = []
        self.healthy_at: float | None = None

    def ensure(self, model: str) -> Future[Readiness]:
        self.asked += 1
        fut: Future[Readiness] = Future()
        if self.table["m"].state is State.RUNNING:
            fut.set_result(Readiness("ok", route=self.table["m"]))
        else:
            self.waiting.append(fut)
        return fut

    def exited(self) -> None:
        self.table = route_table((STARTING,))

    def healthy(self) -> None:
        self.table = route_table((UP,))
        self.healthy_at = time.monotonic()
        for fut in self.waiting:
            fut.set_result(Readiness("ok", route=UP))


def test_a_failed_send_waits_for_the_restart_and_goes_out_the_moment_the_model_is_running() -> None:
    b = RestartingBackend()
    sent: list[float] = []

    def upstream(r: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        if len(sent) == 1:
            # the model just died: the daemon sees it 50 ms later (Docker's `die`), RUNNING again 150 ms later
            threading.Timer(0.05, b.exited).start()
            threading.Timer(0.2, b.healthy).start()
            # what Docker's port proxy answers for a container whose process is gone: a close, no response
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=r)
        return ok({"ok": True})

    # a wait far longer than the restart: only the route's change can end it in time
    r = post(client(b, upstream, retry_delay_s=5.0), {"model": "m"})
    assert r.status_code == 200, r.text
    assert len(sent) == 2, "sent once to the dead model and once to the restarted one, never twice to the dead one"
    assert b.healthy_at is not None and 0 <= sent[1] - b.healthy_at < 0.1, (
        f"sent {sent[1] - b.healthy_at:.3f} s after RUNNING: the request slept instead of waiting for it")
    assert b.demand.usage("m").inflight == 0


def test_a_model_whose_route_does_not_change_is_sent_again_after_the_wait() -> None:
    b = FakeBackend(RUNNING, answer=lambda: Readiness("ok", route=RUNNING))
    sent: list[float] = []

    def upstream(r: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        if len(sent) == 1:
            raise httpx.ConnectError("refused", request=r)
        return ok({"ok": True})

    r = post(client(b, upstream, retry_delay_s=0.3, wait_grace_s=2.0), {"model": "m"})
    assert r.status_code == 200 and len(sent) == 2
    assert sent[1] - sent[0] >= 0.3, f"sent again after {sent[1] - sent[0]:.3f} s, before the wait was over"
