"""Issue 15 on the real engine: a real llama-supervisord's gateway is healthy only once it serves the
manifests' models, a keyed model's key is not bypassed (a key file of several lines works), and
llama-server's other endpoints and foreign Hosts are refused."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import docker
import httpx
import pytest

from .daemon_harness import Daemon, model_yaml, remove_models, wait_for

pytestmark = pytest.mark.docker

LOAD_TIMEOUT = 180.0


def test_the_first_healthy_answer_comes_with_the_manifests_models(tmp_path: Path, docker_client: docker.DockerClient,
                                                                  image_record: object, demo_model: Path) -> None:
    name = f"race{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.yaml").write_text(model_yaml(name, None, demo_model, demo_model.parent.name,
                                                      serving="lifecycle: on-demand\n"))
    d = Daemon(tmp_path).start()
    try:
        def health() -> int:
            try:
                return httpx.get(f"{d.gateway}/health", timeout=1).status_code
            except httpx.TransportError:
                return 0

        codes = []
        deadline = time.monotonic() + 60
        while (code := health()) != 200 and time.monotonic() < deadline:
            codes.append(code)
            time.sleep(0.005)
        assert code == 200, d.dump()
        models = httpx.get(f"{d.gateway}/v1/models", timeout=5).json()["data"]
        assert [m["id"] for m in models] == [name], "healthy means the manifests' models are served"
        assert set(codes) <= {0, 503}
    finally:
        d.terminate()
        remove_models(docker_client, [name])


def test_a_keyed_model_needs_its_key_through_the_gateway(tmp_path: Path, docker_client: docker.DockerClient,
                                                          image_record: object, demo_model: Path) -> None:
    name = f"gkey{uuid.uuid4().hex[:6]}"
    secret = [f"sk-{uuid.uuid4().hex}", f"sk-{uuid.uuid4().hex}"]
    key = tmp_path / "keys" / "api.key"
    key.parent.mkdir()
    key.write_text(f"# two keys, as llama-server allows\n{secret[0]}\n{secret[1]}\n")
    key.chmod(0o644)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / f"{name}.yaml").write_text(model_yaml(name, None, demo_model, demo_model.parent.name,
                                                       api_key_file=key))
    d = Daemon(manifests).start()
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    try:
        def chat(token: str | None, **kw: object) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.post(f"{d.gateway}/v1/chat/completions", json=body, headers=headers,
                              timeout=LOAD_TIMEOUT, **kw)  # type: ignore[arg-type]

        def answers() -> bool:
            try:
                return chat(secret[1]).status_code == 200
            except httpx.TransportError:          # the daemon's gateway is not listening yet
                return False

        wait_for(answers, LOAD_TIMEOUT, "the model answering with its key")
        assert chat(None).status_code == 401
        assert chat("wrong").status_code == 401
        assert chat(secret[0]).status_code == 200, "every line of the key file is a key"
        auth = {"Authorization": f"Bearer {secret[0]}"}
        assert httpx.get(f"{d.gateway}/upstream/{name}/props", headers=auth, timeout=5).status_code == 200
        assert httpx.get(f"{d.gateway}/upstream/{name}/props", timeout=5).status_code == 401
        assert httpx.post(f"{d.gateway}/upstream/{name}/slots/0?action=erase", json={}, headers=auth,
                          timeout=5).status_code == 404
        assert httpx.get(f"{d.gateway}/health", headers={"Host": "evil.example"}, timeout=5).status_code == 421
        assert httpx.post(f"{d.gateway}/v1/chat/completions", content=b"{}", headers={**auth,
                          "Content-Type": "text/plain"}, timeout=5).status_code == 415
        assert not any(s in d.dump() for s in secret), "no key in the daemon's log"
    finally:
        d.terminate()
        remove_models(docker_client, [name])
