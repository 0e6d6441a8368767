"""Issue 15, item 3: what the daemon could not do is never a model's failure.

Under an fd-exhaustion attack the probes failed with EMFILE and the Docker calls with
EMFILE or "engine unreachable"; every model was counted failed until FATAL and stayed
there after the attacker left. Here: inconclusive probes and deferred starts, pure and
through the loop with the fake runtime, and the real errors under a real EMFILE.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from supervisor.core.events import ProbeResult
from supervisor.core.lifecycle import DAEMON_SIDE_FIRST_RETRY_S, DAEMON_SIDE_RETRY_S, Lifecycle, ProbeOutcome, State
from supervisor.core.spec import HealthPolicy, RestartPolicy, RestartSettings
from supervisor.errors import ResourceExhausted, RuntimeUnavailable, exhaustion
from supervisor.daemon.health import probe_once

from .fakes import FakeClock
from .helpers import desired
from .test_loop import Harness

ROOT = Path(__file__).resolve().parents[2]


def make() -> Lifecycle:
    return Lifecycle("m", health=HealthPolicy(interval_s=2, timeout_s=2, failures=3, start_timeout_s=60.0),
                     restart=RestartSettings(policy=RestartPolicy.ALWAYS, max_failures=5),
                     rng=random.Random(7), jitter=0.0)


def emfile() -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE))


# --- the state machine (pure) -----------------------------------------------------------------

def test_inconclusive_probes_never_restart_a_running_model() -> None:
    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    lc.probe(clock.advance(1), ProbeOutcome.OK)
    assert lc.state is State.RUNNING
    lc.probe(clock.advance(2), ProbeOutcome.FAILED)          # one real failure before the attack
    for _ in range(1000):                                    # 2000 s of EMFILE
        assert lc.probe(clock.advance(2), ProbeOutcome.INCONCLUSIVE) is None
        assert lc.tick(clock()) is None
    assert lc.state is State.RUNNING and lc.consecutive_failures == 0
    assert lc.probe_failures == 1                            # neither reset nor counted up
    lc.probe(clock.advance(2), ProbeOutcome.FAILED)
    t = lc.probe(clock.advance(2), ProbeOutcome.FAILED)       # real failures still count, from where they were
    assert t is not None and t.to_state is State.EXITED


def test_inconclusive_probes_hold_the_start_budget_until_a_verdict() -> None:
    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    lc.container_started(clock())
    for _ in range(600):                                     # 300 s, five times the 60 s start budget
        assert lc.probe(clock.advance(0.5), ProbeOutcome.INCONCLUSIVE) is None
        assert lc.tick(clock()) is None
        deadline = lc.next_deadline()
        assert deadline is not None and deadline > clock()  # never a past deadline: the loop must not spin
    assert lc.state is State.STARTING and lc.consecutive_failures == 0
    t = lc.probe(clock.advance(0.5), ProbeOutcome.OK)        # the attacker left; the model was fine
    assert t is not None and t.to_state is State.RUNNING


def test_a_conclusive_failure_after_the_budget_still_fails_the_start() -> None:
    lc, clock = make(), FakeClock()
    lc.start_attempt(clock())
    lc.probe(clock.advance(70), ProbeOutcome.INCONCLUSIVE)
    t = lc.probe(clock.advance(0.5), ProbeOutcome.FAILED)
    assert t is not None and t.to_state is State.BACKOFF and lc.consecutive_failures == 1


def test_deferred_starts_never_count_toward_fatal_nor_as_restarts_and_retry_soon_then_less_often() -> None:
    lc, clock = make(), FakeClock()
    delays = []
    for _ in range(50):                                      # ten times max_failures
        assert lc.wants_running(clock())
        lc.start_attempt(clock())
        t = lc.start_deferred(clock(), "docker create: engine unreachable")
        assert t is not None and t.to_state is State.BACKOFF and t.reason.startswith("daemon-side:")
        assert lc.consecutive_failures == 0 and lc.restarts == 0, "no start happened: no restart either"
        assert lc.backoff_until is not None
        delays.append(lc.backoff_until - clock())
        assert not lc.wants_running(clock.advance(delays[-1] / 2))
        clock.advance(delays[-1] / 2)
    assert lc.state is State.BACKOFF
    assert delays[:5] == [DAEMON_SIDE_FIRST_RETRY_S * 2 ** i for i in range(4)] + [DAEMON_SIDE_RETRY_S]
    assert set(delays[5:]) == {DAEMON_SIDE_RETRY_S}
    lc.start_attempt(clock())
    lc.container_started(clock())                            # it got through: the next deferral starts short
    assert lc.restarts == 0, "the first start that happened is no restart"
    lc.container_exited(clock.advance(100), exit_code=1)
    lc.start_attempt(clock())
    assert lc.restarts == 1
    lc.start_deferred(clock(), "engine unreachable")
    assert lc.restarts == 0, "the restart that could not be made is not counted"
    assert lc.backoff_until == clock() + DAEMON_SIDE_FIRST_RETRY_S


# --- the loop and its executor, with the fake runtime -----------------------------------------

@pytest.mark.parametrize("error", [emfile(), RuntimeUnavailable("docker create x: engine unreachable (refused)")],
                         ids=["EMFILE", "engine-unreachable"])
@pytest.mark.parametrize("op", ["create", "start"])
def test_a_daemon_side_error_on_create_or_start_is_not_the_models_failure(op: str, error: Exception) -> None:
    h = Harness([desired("a")])
    for _ in range(12):                                      # more than twice max_failures (5)
        h.runtime.fail_next[op] = error
        h.step()
        h.clock.advance(DAEMON_SIDE_RETRY_S)
        lc = h.sup.slots["a"].lc
        assert lc.state is State.BACKOFF and lc.consecutive_failures == 0, lc.reason
        assert lc.reason.startswith("daemon-side:")
    assert h.runtime.ops().count(op) == 12                   # retried every DAEMON_SIDE_RETRY_S
    h.step()                                                 # the attacker left
    h.healthy("a")
    assert h.state("a") is State.RUNNING and h.sup.slots["a"].lc.consecutive_failures == 0


class ExhaustedVerifier:
    """A verifier that hits the daemon's descriptor limit: reading the lock raises a raw EMFILE OSError."""

    def check_model(self, d: object) -> None: ...

    def check_image(self, d: object) -> None:
        raise emfile()

    def check_start(self, d: object) -> None:
        raise emfile()

    def confirm_model(self, d: object) -> None: ...


def test_an_emfile_while_verifying_is_deferred_not_a_verification_failure() -> None:
    h = Harness([desired("a")])
    h.sup.executor.verifier = ExhaustedVerifier()
    for _ in range(8):
        h.step()                                             # before: the OSError killed the loop thread
        h.clock.advance(DAEMON_SIDE_RETRY_S)
    lc = h.sup.slots["a"].lc
    assert lc.state is State.BACKOFF and lc.consecutive_failures == 0
    assert "out of resources" in lc.reason and "Too many open files" in lc.reason


def test_probe_results_inconclusive_through_the_loop_never_restart() -> None:
    h = Harness([desired("a")])
    h.step()
    h.healthy("a")
    cid = h.cid("a")
    before = len(h.runtime.calls)
    for _ in range(50):
        h.clock.advance(2)
        h.step(ProbeResult("a", cid, ProbeOutcome.INCONCLUSIVE, 0.0, "daemon-side: Too many open files"))
    assert h.state("a") is State.RUNNING and h.cid("a") == cid
    assert not [c for c in h.runtime.calls[before:] if c[0] in ("stop", "kill", "create", "start", "remove")]


# --- the real errors under a real EMFILE (a child process with a low RLIMIT_NOFILE) -------------

def test_probe_errors_are_classified_by_their_chain() -> None:
    def raising(exc: Exception) -> httpx.Client:
        def handler(request: httpx.Request) -> httpx.Response:
            raise exc
        return httpx.Client(transport=httpx.MockTransport(handler))

    wrapped = httpx.ConnectError("[Errno 24] Too many open files")
    wrapped.__cause__ = emfile()
    assert probe_once(raising(wrapped), "http://m/health", 1)[0] is ProbeOutcome.INCONCLUSIVE
    assert probe_once(raising(emfile()), "http://m/health", 1)[0] is ProbeOutcome.INCONCLUSIVE
    refused = httpx.ConnectError("refused")
    refused.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert probe_once(raising(refused), "http://m/health", 1)[0] is ProbeOutcome.FAILED
    assert probe_once(raising(httpx.ReadTimeout("slow")), "http://m/health", 1)[0] is ProbeOutcome.FAILED
    assert exhaustion(RuntimeError("x")) is None


CHILD = textwrap.dedent("""
    import json, os, resource, socket, sys, tempfile
    import httpx, docker
    from supervisor.daemon.health import probe_once
    from supervisor.artifacts.modelsrc import ModelVerifier
    from supervisor.artifacts.engine import engine_errors
    model = os.path.join(tempfile.mkdtemp(), "m.gguf")
    open(model, "wb").write(b"GGUF")
    listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(1)
    client = httpx.Client(trust_env=False)
    api = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    out = {"probe": probe_once(client, f"http://127.0.0.1:{listener.getsockname()[1]}/health", 1)[0].value}
    for name, call in (("verify", lambda: ModelVerifier().check(__import__("pathlib").Path(model), "0" * 64)),
                       ("docker", lambda: api.ping())):
        try:
            with engine_errors("ping", "engine"):
                call()
            out[name] = "no error"
        except Exception as e:
            out[name] = type(e).__name__
    print(json.dumps(out))
""")


def test_under_a_real_emfile_probe_verify_and_docker_are_daemon_side() -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"probe": "inconclusive", "verify": "ResourceExhausted", "docker": "ResourceExhausted"}, out


def test_resource_exhausted_is_daemon_side_and_retryable() -> None:
    from supervisor.errors import DaemonSideError

    assert issubclass(ResourceExhausted, DaemonSideError) and issubclass(RuntimeUnavailable, DaemonSideError)
    assert ResourceExhausted.retryable and RuntimeUnavailable.retryable


def test_the_loop_retries_exactly_the_retryable_branch_of_the_tree() -> None:
    """The loop's handlers catch RetryableError: a runtime call's failure and the daemon's own, never a
    verification failure (permanent) nor a fetch (the operator runs the command again)."""
    from supervisor import errors

    retried = (errors.RuntimeOperationError, errors.RuntimeUnavailable, errors.ResourceExhausted,
               errors.DaemonSideError)
    assert all(issubclass(c, errors.RetryableError) and c.retryable for c in retried)
    permanent = (errors.VerificationError, errors.ModelMismatch, errors.ImageMismatch, errors.SourceMismatch,
                 errors.ConfigError, errors.ControlError, errors.BuildError, errors.FetchError)
    assert not any(issubclass(c, errors.RetryableError) for c in permanent)


def test_the_daemon_raises_its_soft_nofile_limit_to_the_hard_one() -> None:
    child = ("import resource; from supervisor.cli.daemon import raise_nofile_limit;"
             "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1];"
             "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard));"
             "print(raise_nofile_limit() == resource.getrlimit(resource.RLIMIT_NOFILE), "
             "resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 256)")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.split() == ["True", "True"], proc.stderr


def test_a_retried_deferred_start_is_not_counted_as_a_restart_anywhere() -> None:
    from supervisor.control.api import NullMetrics

    class Restarts(NullMetrics):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def restart(self, model: str, reason: str) -> None:
            self.seen.append(model)

    h = Harness([desired("a")])
    h.sup.metrics = metrics = Restarts()
    h.runtime.fail_next["create"] = RuntimeUnavailable("docker create x: engine unreachable (refused)")
    h.step()
    assert h.state("a") is State.BACKOFF
    h.clock.advance(DAEMON_SIDE_FIRST_RETRY_S)
    h.step()                                                 # the retry gets through
    assert h.state("a") is State.STARTING
    assert h.sup.slots["a"].lc.restarts == 0 and metrics.seen == [], "it never started before: no restart"
    assert next(s for s in h.sup.snapshot() if s.name == "a").restarts == 0
