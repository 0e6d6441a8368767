"""A manifest edit under streaming load, on the real engine, image and demo model (issue 21).

Three clients stream completions through the gateway without pause while the model's ctx_size is
edited, stop-first (`--recreate stop-first`; start-first is test_recreate_start_first.py). The old
container is drained (DRAINING: nothing new is sent to it, the streams it has finish), then recreated; requests sent meanwhile wait in the model's queue. Every request, the
ones in flight at the edit included, is answered 200 with a complete stream.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import docker
import httpx
import pytest

from .daemon_harness import Daemon, remove_models, stream_completion, wait_for, write_edited_model

pytestmark = pytest.mark.docker

LOAD_TIMEOUT = 120.0


def test_streams_through_a_manifest_edit_are_all_answered_in_full(
        tmp_path: Path, docker_client: docker.DockerClient, image_record: object, demo_model: Path) -> None:
    name = f"drain{uuid.uuid4().hex[:6]}"
    manifest = tmp_path / "m.yaml"

    def write(ctx: int) -> None:
        # a shared 2-core host can take longer than the size-based default to load even this model
        write_edited_model(manifest, name, demo_model, ctx=ctx, start_timeout=120)

    write(512)
    # the drain lasts up to the stop timeout: long enough here for a stream on a loaded 2-core host
    d = Daemon(tmp_path, extra=["--stop-timeout", "60", "--recreate", "stop-first"]).start()
    results: list[tuple[float, float, int, bool, str]] = []     # (sent, done, status, complete, tail)
    stop = threading.Event()
    url = f"{d.gateway}/v1/completions"

    def client() -> None:
        with httpx.Client(timeout=LOAD_TIMEOUT, trust_env=False) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    status, complete, tail = stream_completion(c, url, name, 12)
                except (httpx.HTTPError, ValueError) as e:
                    status, complete, tail = 0, False, repr(e)
                results.append((t0, time.monotonic(), status, complete, tail))

    threads = [threading.Thread(target=client) for _ in range(3)]
    try:
        wait_for(lambda: d.model_state(name) == "RUNNING", LOAD_TIMEOUT, "the model running")
        for t in threads:
            t.start()
        wait_for(lambda: len(results) >= 6, LOAD_TIMEOUT, "streams flowing")
        t_edit = time.monotonic()
        write(1024)
        t_up, _ = d.wait_log(lambda r: r.get("event") == "transition" and r.get("model") == name
                             and r.get("from") == "STARTING" and r.get("to") == "RUNNING", LOAD_TIMEOUT,
                             "the new container running", since=t_edit)
        wait_for(lambda: any(r[0] >= t_up for r in results), LOAD_TIMEOUT, "streams after the new container")
    except AssertionError:
        with d._lock:
            print("\n".join(json.dumps(r) for _, r in d.lines[:120]))
        raise
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join(LOAD_TIMEOUT)
        if d.proc and d.proc.poll() is None:
            d.terminate()
        remove_models(docker_client, [name])
    after = [r for r in results if r[0] >= t_edit]
    in_flight = [r for r in results if r[0] < t_edit <= r[1]]
    bad = [r for r in after + in_flight if r[2] != 200 or not r[3]]
    drained = d.find(lambda r: r.get("model") == name and str(r.get("event", "")).startswith("drain"), t_edit)
    assert after and in_flight, (len(after), len(in_flight))
    assert not bad, (t_edit, drained, bad)
    draining = d.find(lambda r: r.get("event") == "transition" and r.get("model") == name
                      and r.get("to") == "DRAINING", t_edit)
    assert draining is not None, "the old container was drained before it was stopped"
    assert drained is not None and drained[1]["event"] == "drained", drained
    waited = max(r[1] - r[0] for r in after)
    print(f"\nmanifest edit under 3 streaming clients: {len(in_flight)} streams in flight finished on the old "
          f"container ({drained[1]}), {len(after)} sent after the edit, all 200 and complete; longest wait+stream "
          f"{waited:.1f} s")
