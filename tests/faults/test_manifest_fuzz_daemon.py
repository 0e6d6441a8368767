"""Bad manifests through a running daemon's reload path: it never dies, never changes a container,
and names the file and line of every problem.

Fast part: the real loop (Supervisor) in-process with the real loader and renderer
(render.load_desired against the real image lock) and a hand-written FakeRuntime,
one reload per hypothesis example. Real part: garbled writes into the watched
directory of the real llama-supervisord beside its healthy bystander model.
"""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from integration.daemon_harness import healthy, identity, model_yaml, wait_for
from supervisor import paths
from supervisor.cli.daemon import make_loader
from supervisor.core.events import Event, ManifestsChanged
from supervisor.daemon.loop import Supervisor
from unit.fakes import FakeProber, FakeRuntime, FakeVerifier
from unit.manifest_strategies import KINDS, Case, bad_manifest_files

from .conftest import Shared
from .helpers import uid

MUTATING = {"create", "start", "stop", "kill", "unpause", "remove"}
ALWAYS_BAD = ("unknown_key", "unicode", "duplicate_name", "duplicate_port", "yaml_bomb", "recursive_alias",
              "unknown_flag", "missing_profile", "bad_kind", "huge_number", "wrong_type")


@dataclass
class InProcess:
    dir: Path
    sup: Supervisor
    rt: FakeRuntime
    base: str

    def reload(self) -> list[dict[str, Any]]:
        self.sup.post(ManifestsChanged(origin="fuzz"))
        with capture_logs() as logs:
            self.sup.iteration(block=False)
        return logs


@pytest.fixture(scope="module")
def inproc(tmp_path_factory: pytest.TempPathFactory, image_record: object, demo_model: Path) -> Iterator[InProcess]:
    directory = tmp_path_factory.mktemp("fuzz")
    base = "fuzzbase"
    (directory / "base.yaml").write_text(model_yaml(base, 39000, demo_model, demo_model.parent.name))
    rt = FakeRuntime()
    events: queue.Queue[Event] = queue.Queue()
    sup = Supervisor(events=events, runtime=rt, verifier=FakeVerifier(),
                     load_desired=make_loader(directory, paths.lock_path()), prober=FakeProber())
    ip = InProcess(directory, sup, rt, base)
    ip.reload()
    assert sup.problems == [] and rt.ops().count("create") == 1
    yield ip


def _problems(logs: list[dict[str, Any]]) -> list[str]:
    return [e.get("problem") or e.get("error", "") for e in logs
            if e["log_level"] == "error" and "keeping the last good set" in e["event"]]


@pytest.mark.docker    # no container runs, but its fixture renders against the real image lock and demo model
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_reload_of_bad_manifests_changes_no_container_and_names_file_and_line(
    inproc: InProcess, kind: str, data: st.DataObject
) -> None:
    case: Case = data.draw(bad_manifest_files(kind=kind))
    ip = inproc
    base_cid = ip.sup.slots[ip.base].container_id
    files = [ip.dir / f"f{i}.yaml" for i in range(len(case.texts))]
    for f, text in zip(files, case.texts):
        f.write_text(text, encoding="utf-8", errors="surrogatepass")
    mark = len(ip.rt.calls)
    try:
        logs = ip.reload()
        assert not ip.sup.stopping
        problems = _problems(logs)
        assert problems == ip.sup.problems
        if case.must_fail:
            assert problems, f"{kind} accepted:\n" + "\n---\n".join(case.texts)
        if problems:
            assert not [c for c in ip.rt.calls[mark:] if c[0] in MUTATING], ip.rt.calls[mark:]
            pattern = re.compile("^(" + "|".join(re.escape(str(f)) for f in files) + r"):[0-9]+: \S")
            for p in problems:
                assert pattern.match(p), p
    finally:
        for f in files:
            f.unlink()
        ip.reload()
    assert ip.sup.problems == [] and set(ip.sup.slots) == {ip.base}
    assert ip.sup.slots[ip.base].container_id == base_cid
    assert ip.rt.containers[base_cid].status == "running"


@pytest.mark.docker
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(ALWAYS_BAD).flatmap(lambda k: bad_manifest_files(kind=k)).filter(lambda c: c.must_fail))
def test_garbled_writes_into_a_running_daemons_directory_leave_its_model_alone(
    shared: Shared, docker_client: docker.DockerClient, case: Case
) -> None:
    d = shared.daemon
    before = identity(docker_client, shared.steady)
    tag = uid("fz")
    files = [shared.dir / f"{tag}-{i}.yaml" for i in range(len(case.texts))]
    t0 = time.monotonic()
    try:
        for f, text in zip(files, case.texts):
            tmp = f.with_name("." + f.name + ".tmp")
            tmp.write_text(text, encoding="utf-8", errors="surrogatepass")
            tmp.rename(f)
        _, rec = d.wait_log(lambda r: r.get("event", "").startswith("invalid manifest")
                            and any(r.get("problem", "").startswith(f"{f}:") for f in files), 10,
                            f"{case.kind} error logged", since=t0)
        assert re.match(r"^\S+\.yaml:[0-9]+: \S", rec["problem"]), rec
    except AssertionError:
        print(d.dump())
        raise
    finally:
        for f in files:
            f.unlink(missing_ok=True)
    assert d.proc is not None and d.proc.poll() is None, "the daemon died"
    assert identity(docker_client, shared.steady) == before
    bad = d.find(lambda r: r.get("event", "").startswith("invalid manifest")
                 and not re.match(r"^\S+\.yaml:[0-9]+: \S", r.get("problem", "")))
    assert bad is None, bad


@pytest.mark.docker
def test_daemon_still_serves_after_the_garbled_writes(shared: Shared, docker_client: docker.DockerClient) -> None:
    wait_for(lambda: healthy(shared.steady_port), 10, "bystander healthy")
    assert shared.daemon.proc is not None and shared.daemon.proc.poll() is None
