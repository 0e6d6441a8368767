"""The extra_args allowlist and the rendered off-switches against the real image (issue 15).

Every allowed flag is one the built llama-server lists (or OTHER_RELEASES says why not); the lock
records the flags whose help warns against untrusted environments; a container started with the
rendered argv answers CORS with an origin no page has, no credentials, and a disabled /cors-proxy.
"""

from __future__ import annotations

import socket
from pathlib import Path

import docker
import httpx
import pytest

from supervisor.artifacts import hardware, images
from supervisor.render.allowed_flags import ALLOWED, OTHER_RELEASES
from supervisor.artifacts.lock import ImageLock, ImageRecord
from supervisor.manifest import load_text
from supervisor.render.argv import CORS_ORIGINS
from supervisor.render.desired import render_all

from .daemon_harness import wait_container_healthy

pytestmark = pytest.mark.docker

MUST_WARN = {"--agent", "--tools", "--mcp-servers-json", "--mcp-servers-config", "--webui-mcp-proxy"}


def test_every_allowed_flag_is_listed_by_the_real_image_or_documented_as_absent(
    docker_client: docker.DockerClient, image_record: ImageRecord
) -> None:
    derived = images.derive(docker_client, image_record.tag)
    absent = sorted(set(ALLOWED) - derived.flags - set(OTHER_RELEASES))
    assert absent == [], f"allowed but not in {image_record.tag}'s --help: {absent} (add them to OTHER_RELEASES)"
    assert not set(ALLOWED) & derived.warned_flags
    print(f"\n{image_record.tag}: {len(derived.flags)} flags, {len(set(ALLOWED) & derived.flags)} allowed,"
          f" warned: {sorted(derived.warned_flags)}")


def test_the_lock_records_the_flags_whose_help_warns(image_record: ImageRecord) -> None:
    assert MUST_WARN <= image_record.warned_flags, (
        f"the lock's {image_record.variant} record lacks warned_flags {sorted(MUST_WARN - image_record.warned_flags)}:"
        f" a lock written before the field; rebuild with 'llama-supervisorctl build {image_record.variant}'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_rendered_argv_answers_cors_with_no_origin_and_keeps_the_proxy_off(
    docker_client: docker.DockerClient, image_record: ImageRecord, demo_model: Path
) -> None:
    profile = f"kind: profile\nname: p\nvariant: {image_record.variant}\n"
    text = (f"kind: model\nname: m\nprofile: p\nsource: {{path: {demo_model}, sha256: {'a' * 64}}}\n"
            f"server: {{port: 8081, ctx_size: 512, threads: 1}}\n---\n{profile}")
    lock = ImageLock({image_record.variant: image_record})
    desired, problems = render_all(load_text(text, name="m.yaml"), lock, hardware.detect(), file_sizes={})
    assert problems == []
    spec = desired["m"].spec
    argv = list(spec.argv)
    assert argv[argv.index("--cors-origins") + 1] == CORS_ORIGINS
    assert {"--no-agent", "--no-ui-mcp-proxy", "--no-cors-credentials", "--no-webui"} <= set(argv)
    port = _free_port()
    container = docker_client.containers.run(
        image_record.image_id, argv, detach=True, ports={"8080/tcp": ("127.0.0.1", port)}, read_only=True,
        tmpfs={"/tmp": "size=64m"}, cap_drop=["ALL"], security_opt=["no-new-privileges:true"], mem_limit="1g",
        volumes={spec.mounts[0].source: {"bind": spec.mounts[0].target, "mode": "ro"}},
        labels={"io.llama-supervisor.test": "allowed-flags"},
    )
    try:
        wait_container_healthy(container, port)
        evil = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        pre = httpx.options(f"http://127.0.0.1:{port}/v1/chat/completions", headers=evil, timeout=5)
        assert pre.headers["access-control-allow-origin"] == CORS_ORIGINS      # before: the Origin echoed back
        assert pre.headers["access-control-allow-credentials"] == "false"     # before: true
        proxy = httpx.get(f"http://127.0.0.1:{port}/cors-proxy", params={"url": "http://127.0.0.1:1/"}, timeout=5)
        assert proxy.status_code == 403
        assert "CORS allows all origins" not in container.logs().decode()
    finally:
        container.remove(force=True)
