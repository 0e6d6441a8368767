"""`llama-supervisorctl status` and the other daemon commands: golden output and exit codes, through a real socket."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from supervisor.cli import cmd_bench, cmd_control
from supervisor.control.api import (
    ModelResult,
    Reload,
    Reread,
    Shutdown,
    StartModels,
    StopModels,
    Unload,
    Update,
)
from supervisor.control.server import ControlServer
from supervisor.core.status import ModelStatus

from .fakes import FakeController


def model(name: str, state: str, **kw: object) -> ModelStatus:
    fields: dict[str, object] = dict(port=None, container_id=None, image_id=None, uptime_s=None,
                                     restarts=0, last_exit_code=None, reason="")
    fields.update(kw)
    return ModelStatus(name=name, state=state, **fields)  # type: ignore[arg-type]


GEMMA = model("gemma", "RUNNING", port=8081, container_id="3f2a9c1d5e6f7a8b", image_id="sha256:ab",
              uptime_s=312.7, restarts=2)
QWEN = model("qwen", "BACKOFF", port=8082, restarts=3, last_exit_code=137,
             reason="exited 137 (OOMKilled) 3 times; last log: ggml_aligned_malloc: failed to allocate")
BROKEN = model("broken", "FATAL", port=8083, last_exit_code=1,
               reason="failed to start 5 times; last log: error: unknown argument: --foo")
LONG = model("a-model-name-that-is-much-longer-than-thirty", "RUNNING", port=8090,
             container_id="0123456789abcdef", uptime_s=90061, restarts=0)


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    with capture_logs():  # the server runs in this process: keep its log lines out of the CLI's stdout
        yield


@pytest.fixture
def daemon(sock_dir: Path) -> Iterator[FakeController]:
    controller = FakeController([GEMMA, QWEN, BROKEN])
    server = ControlServer(controller, sock_dir / "control.sock")
    server.start()
    yield controller
    server.close()


@click.group()
def ctl() -> None:
    """Stands in for llama-supervisorctl's group."""


cmd_control.register(ctl)
cmd_bench.register(ctl)


def run(sock_dir: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(ctl, ["--socket", str(sock_dir / "control.sock"), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# --- status ---------------------------------------------------------------------------------

def test_status_layout_all_models(daemon: FakeController, sock_dir: Path) -> None:
    code, out, _ = run(sock_dir, "status")
    assert out == (
        "gemma                            RUNNING   port 8081, container 3f2a9c1d, uptime 0:05:12, restarts 2\n"
        "qwen                             BACKOFF   exited 137 (OOMKilled) 3 times; last log: "
        "ggml_aligned_malloc: failed to allocate\n"
        "broken                           FATAL     failed to start 5 times; last log: error: unknown argument: --foo\n"
    )
    assert code == 3  # some model is not RUNNING


def test_status_of_running_model_exits_0(daemon: FakeController, sock_dir: Path) -> None:
    code, out, _ = run(sock_dir, "status", "gemma")
    assert out == "gemma                            RUNNING   port 8081, container 3f2a9c1d, uptime 0:05:12, restarts 2\n"
    assert code == 0


def test_status_of_stopped_model_exits_3(daemon: FakeController, sock_dir: Path) -> None:
    code, out, _ = run(sock_dir, "status", "broken")
    assert out.startswith("broken                           FATAL     failed to start 5 times")
    assert code == 3


def test_long_name_widens_the_name_column(sock_dir: Path) -> None:
    stopped = model("x", "STOPPED")
    exited = model("y", "EXITED", last_exit_code=0)
    with ControlServer(FakeController([LONG, stopped, exited]), sock_dir / "control.sock"):
        code, out, _ = run(sock_dir, "status")
    width = len(LONG.name) + 3
    assert out.splitlines() == [
        f"{LONG.name}   RUNNING   port 8090, container 01234567, uptime 1 day, 1:01:01, restarts 0",
        "x".ljust(width) + "STOPPED",
        "y".ljust(width) + "EXITED    exited 0",
    ]
    assert code == 3


def test_status_json(daemon: FakeController, sock_dir: Path) -> None:
    code, out, _ = run(sock_dir, "status", "--json", "gemma", "qwen")
    assert json.loads(out) == [GEMMA.to_json(), QWEN.to_json()]
    assert set(json.loads(out)[0]) >= {"name", "state", "port", "container_id", "image_id", "uptime_s",
                                       "restarts", "last_exit_code", "reason"}
    assert code == 3


def test_status_unknown_name_exits_4(daemon: FakeController, sock_dir: Path) -> None:
    code, out, _ = run(sock_dir, "status", "gemma", "nope")
    assert out.splitlines()[-1] == "nope: ERROR (no such model)"
    assert code == 4


def test_daemon_not_running_exits_4_and_says_how_to_start_it(sock_dir: Path) -> None:
    code, out, err = run(sock_dir, "status")
    assert code == 4
    assert out == ""
    assert err == (f"error: llama-supervisord is not running (no socket at {sock_dir / 'control.sock'}): "
                   "start it with 'systemctl start llama-supervisor' or 'make run'\n")


# --- the other commands -----------------------------------------------------------------------

def test_start_prints_each_result_and_exits_3_on_failure(daemon: FakeController, sock_dir: Path) -> None:
    daemon.failures["broken"] = "image checksum mismatch: run 'llama-supervisorctl build cpu-avx2'"
    code, out, _ = run(sock_dir, "start", "gemma", "broken")
    assert out == ("gemma: started\n"
                   "broken: ERROR (image checksum mismatch: run 'llama-supervisorctl build cpu-avx2')\n")
    assert code == 3
    assert daemon.commands == [StartModels(("gemma", "broken"), wait=True)]


def test_start_all_and_unknown_name(daemon: FakeController, sock_dir: Path) -> None:
    assert run(sock_dir, "start", "all") == (0, "gemma: started\nqwen: started\nbroken: started\n", "")
    code, out, _ = run(sock_dir, "restart", "gemma", "nope")
    assert (code, out) == (4, "gemma: started\nnope: ERROR (no such model)\n")


def test_stop(daemon: FakeController, sock_dir: Path) -> None:
    assert run(sock_dir, "stop", "qwen") == (0, "qwen: stopped\n", "")
    assert daemon.commands == [StopModels(("qwen",))]


def test_unload(daemon: FakeController, sock_dir: Path) -> None:
    assert run(sock_dir, "unload", "qwen") == (0, "qwen: stopped\n", "")
    assert daemon.commands == [Unload(("qwen",))]


def test_reread_update_reload(daemon: FakeController, sock_dir: Path) -> None:
    assert run(sock_dir, "reread") == (0, "No config updates to models\n", "")
    daemon.changes = [ModelResult("new", True, "available"), ModelResult("gemma", True, "changed"),
                      ModelResult("old", True, "disappeared")]
    assert run(sock_dir, "reread")[1] == "new: available\ngemma: changed\nold: disappeared\n"
    assert run(sock_dir, "update")[0] == 0
    assert run(sock_dir, "reload") == (0, "new: available\ngemma: changed\nold: disappeared\nreloaded\n", "")
    assert daemon.commands[1:] == [Reread(), Update(), Reload()]


def test_pid_tail_shutdown(daemon: FakeController, sock_dir: Path) -> None:
    assert run(sock_dir, "pid") == (0, "4242\n", "")
    assert run(sock_dir, "tail", "-n", "2", "gemma") == (0, "line 2\nline 3\n", "")
    code, _, err = run(sock_dir, "tail", "nope")
    assert (code, err) == (4, "error: no such model: nope\n")
    assert run(sock_dir, "shutdown", "--stop-models") == (0, "Shut down\n", "")
    assert daemon.commands == [Shutdown(stop_models=True)]


# --- bench ------------------------------------------------------------------------------------

class _FakeLlamaServer(BaseHTTPRequestHandler):
    """Streams a chat completion the way llama-server does, and wants an API key."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != "Bearer sekrit":
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "Invalid API Key"}}')
            return
        assert body["stream"] is True and body["messages"][0]["role"] == "user"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in ("The", " sea", " is", " wide", "."):
            chunk = {"choices": [{"delta": {"content": word}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        final = {"choices": [{"delta": {}, "finish_reason": "stop"}],
                 "timings": {"predicted_n": 5, "predicted_per_second": 42.5}}
        self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args: object) -> None:
        pass


def test_bench_against_a_streaming_server(sock_dir: Path, tmp_path: Path) -> None:
    http = ThreadingHTTPServer(("127.0.0.1", 0), _FakeLlamaServer)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    key = tmp_path / "key"
    key.write_text("sekrit\n")
    running = model("gemma", "RUNNING", port=http.server_address[1], container_id="3f2a9c1d")
    try:
        with ControlServer(FakeController([running, QWEN]), sock_dir / "control.sock"):
            code, out, _ = run(sock_dir, "bench", "gemma", "--api-key-file", str(key))
            assert code == 0, out
            lines = out.splitlines()
            assert lines[0] == f"gemma (port {running.port}, 5 tokens)"
            assert lines[1].startswith("  time to first token  ") and lines[1].endswith(" s")
            assert lines[2] == "  tokens/s             42.5"
            assert lines[3].startswith("  total latency        ")

            code, _, err = run(sock_dir, "bench", "gemma")
            assert code == 1 and "HTTP 401" in err and "--api-key-file" in err
            code, out, _ = run(sock_dir, "bench", "qwen")
            assert code == 3 and out.startswith("qwen: ERROR (not running: BACKOFF, exited 137")
    finally:
        http.shutdown()
        http.server_close()


def test_on_demand_models_show_last_use_ttl_and_memory_and_idle_is_not_a_failure() -> None:
    from supervisor.cli.cmd_control import _as_wanted, describe

    running = model("chat", "RUNNING", port=32768, container_id="0123456789abcdef", uptime_s=65, lifecycle="on-demand",
                    idle_s=12.4, ttl_left_s=287.6, memory_counted=1 << 30, memory_used=88 * 2**20)
    assert describe(running) == ("port 32768, container 01234567, uptime 0:01:05, restarts 0, on-demand,"
                                 " last request 0:00:12 ago, stops when idle in 0:04:47,"
                                 " memory 88 MiB used of 1024 MiB counted")
    idle = model("chat", "STOPPED", reason="stopped", lifecycle="on-demand", memory_counted=1 << 30)
    assert describe(idle) == "stopped, on-demand, memory 1024 MiB counted"
    assert _as_wanted(idle) and not _as_wanted(model("fixed", "STOPPED"))
    swapped = model("chat", "STOPPED", reason="stopped", lifecycle="on-demand", swaps=3, swap_wait_s=10.42)
    assert describe(swapped) == "stopped, on-demand, 3 swaps, the last waited 10.4s"
    loaded = model("chat", "STOPPED", reason="stopped", lifecycle="on-demand", load_s=1.96, memory_counted=1 << 30)
    assert describe(loaded) == "stopped, on-demand, last load 2.0s, memory 1024 MiB counted"
    held = model("chat", "STOPPED", reason="idle", lifecycle="on-demand", held=True)
    assert describe(held) == "idle, on-demand, container held ready (standby)"


def test_a_draining_model_says_so_with_its_requests_in_flight_and_waiting(sock_dir: Path) -> None:
    draining = model("m", "DRAINING", reason="manifest changed: draining 2 request(s) in flight, then recreating",
                     inflight=1, waiting=3)
    with ControlServer(FakeController([draining]), sock_dir / "control.sock"):
        code, out, _ = run(sock_dir, "status")
    assert out.splitlines() == ["m".ljust(33) + "DRAINING  manifest changed: draining 2 request(s) in flight, then"
                                " recreating; now 1 in flight, 3 waiting"]
    assert code == 3, "not RUNNING: the model is being replaced"
