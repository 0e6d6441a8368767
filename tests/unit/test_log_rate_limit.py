"""Issue 15, item 3: repeated identical log lines are rate-limited, so no attack fills the disk through the
daemon's log (its stderr grew 255 MB in 2.5 minutes of asyncio's "socket.accept() out of system resource")."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from supervisor import logs
from supervisor.logs import RateLimiter, Suppressed

from .fakes import FakeClock


@pytest.fixture
def configured() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for h in [h for h in root.handlers if h.get_name() == "llama-supervisor-stderr"]:
        root.removeHandler(h)


def test_a_key_gets_its_burst_per_window_then_one_report() -> None:
    clock = FakeClock()
    rl = RateLimiter(burst=5, window_s=10, clock=clock)
    admitted = [rl.admit(("error", "boom", "a"))[0] for _ in range(1000)]
    assert admitted.count(True) == 5 and admitted[:5] == [True] * 5
    assert rl.admit(("error", "other", ""))[1] == []          # the window of "boom" is still open
    clock.advance(10)
    ok, closed = rl.admit(("info", "anything", ""))
    assert ok and closed == [Suppressed(("error", "boom", "a"), 995, 10)]
    assert rl.admit(("error", "boom", "a")) == (True, [])     # a new window, reported once only


def test_memory_is_bounded_by_max_keys() -> None:
    clock = FakeClock()
    rl = RateLimiter(burst=1, window_s=10, max_keys=64, clock=clock)
    for _ in range(3):
        rl.admit(("error", "k0"))                             # k0: 2 repeats dropped
    closed = [s for i in range(100_000) for s in rl.admit(("error", f"k{i + 1}"))[1]]
    assert len(rl) <= 64
    assert closed == [Suppressed(("error", "k0"), 2, 10)]     # evicted early, its repeats still reported


def test_structlog_lines_are_limited_and_summarised(configured: None, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    logs.setup("json", limiter=RateLimiter(burst=5, window_s=10, clock=clock))
    log = structlog.get_logger("supervisor.daemon")
    for _ in range(10_000):
        log.warning("probe inconclusive; daemon-side", model="a", detail="daemon-side: Too many open files")
    log.warning("probe inconclusive; daemon-side", model="b")   # another model keeps its own budget
    clock.advance(10)
    log.info("ready")
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    events = [(ln["event"], ln.get("model")) for ln in lines]
    assert events == [("probe inconclusive; daemon-side", "a")] * 5 + [
        ("probe inconclusive; daemon-side", "b"), ("log repeats suppressed", None), ("ready", None)]
    (summary,) = [ln for ln in lines if ln["event"] == "log repeats suppressed"]
    assert summary["repeats"] == 9995 and "probe inconclusive" in summary["of"] and "model=a" in summary["of"].split()


def test_lines_that_differ_in_any_field_are_news_not_repeats(configured: None,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    logs.setup("json", limiter=RateLimiter(burst=5, window_s=10, clock=clock))
    log = structlog.get_logger("supervisor.daemon")
    for i in range(20):      # twenty different bad manifests in one window: the operator needs every one
        log.error("invalid manifest: keeping the last good set", problem=f"/m/f{i}.yaml:3: unknown key")
    problems = [json.loads(ln)["problem"] for ln in capsys.readouterr().out.splitlines()]
    assert problems == [f"/m/f{i}.yaml:3: unknown key" for i in range(20)]


def test_stdlib_records_asyncio_and_uvicorn_are_limited(configured: None,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    logs.setup("json", limiter=RateLimiter(burst=5, window_s=10, clock=clock))
    asyncio_log = logging.getLogger("asyncio")
    for fd in range(10_000):
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            asyncio_log.error("socket.accept() out of system resource\nsocket: <socket fd=%d>", fd, exc_info=True)
    clock.advance(10)
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    err = capsys.readouterr().err
    assert err.count("ERROR asyncio: socket.accept() out of system resource") == 5
    assert "log repeats suppressed: 9995 repeats in 10s of ERROR socket.accept() out of system resource" in err
    assert "WARNING uvicorn.error: Invalid HTTP request received." in err
    assert len(err) < 10_000          # before: 10,000 tracebacks, about 2.5 MB


def test_setup_twice_keeps_one_handler(configured: None) -> None:
    logs.setup("json")
    logs.setup("json")
    assert [h.get_name() for h in logging.getLogger().handlers].count("llama-supervisor-stderr") == 1
