"""What DockerRuntime asks the engine for, without an engine: hardening and labels are values."""

from __future__ import annotations

from supervisor.core.spec import GpuRequest
from supervisor.runtime import LABEL_HASH, LABEL_INSTANCE, LABEL_MANAGED, LABEL_MODEL
from supervisor.runtime.docker import container_kwargs, host_config_kwargs, observed_from_inspect, observed_from_list
from supervisor.runtime.events import parse

from .helpers import desired


def test_container_is_hardened_and_published_on_loopback() -> None:
    spec = desired("gemma", port=8081).spec
    hc = host_config_kwargs(spec)
    assert hc["port_bindings"] == {"8080/tcp": ("127.0.0.1", 8081)}
    assert hc["read_only"] is True and hc["cap_drop"] == ["ALL"]
    assert hc["security_opt"] == ["no-new-privileges:true"]
    assert hc["tmpfs"] == {"/tmp": "rw,noexec,nosuid,size=64m"}
    assert hc["restart_policy"] == {"Name": "no"}
    assert hc["cpu_shares"] == 512 and hc["network_mode"] == "llama-supervisor"
    assert hc["mem_limit"] == hc["memswap_limit"] == 1 << 30
    assert all(m["ReadOnly"] for m in hc["mounts"])
    assert "device_requests" not in hc
    ck = container_kwargs(spec, "blue")
    assert ck["image"] == spec.image_id and ck["user"] == "65532:65532" and ck["name"] == "llama-supervisor-gemma"
    assert ck["labels"] == {LABEL_MANAGED: "true", LABEL_INSTANCE: "blue", LABEL_MODEL: "gemma",
                            LABEL_HASH: spec.config_hash()}
    assert "environment" not in ck


def test_gpu_device_request() -> None:
    from dataclasses import replace

    spec = replace(desired("g").spec, gpu=GpuRequest(vendor="nvidia", device_ids=("0",)))
    (req,) = host_config_kwargs(spec)["device_requests"]
    assert req["Driver"] == "nvidia" and req["DeviceIDs"] == ["0"] and req["Capabilities"] == [["gpu"]]


def test_observed_from_list_and_inspect() -> None:
    labels = {LABEL_MANAGED: "true", LABEL_MODEL: "m", LABEL_HASH: "h"}
    c = observed_from_list({"Id": "abc", "Names": ["/llama-supervisor-m"], "Labels": labels,
                            "State": "exited", "Status": "Exited (137) 3 seconds ago", "ImageID": "sha256:1"})
    assert (c.model, c.config_hash, c.status, c.exit_code, c.name) == ("m", "h", "exited", 137, "llama-supervisor-m")
    c = observed_from_inspect({"Id": "abc", "Name": "/x", "Image": "sha256:1", "Config": {"Labels": labels},
                               "State": {"Status": "exited", "ExitCode": 137, "OOMKilled": True,
                                         "StartedAt": "2026-01-01T00:00:00Z"}})
    assert c.oom_killed and c.exit_code == 137 and c.started_at.startswith("2026")


def test_events_parse() -> None:
    ev = parse({"Type": "container", "Action": "die", "timeNano": 5,
                "Actor": {"ID": "abc", "Attributes": {"exitCode": "137", LABEL_MODEL: "m"}}})
    assert ev is not None and ev.exit_code == 137 and ev.model == "m" and ev.action.value == "die"
    assert parse({"Type": "container", "Action": "exec_start: sh", "Actor": {}}) is None
    assert parse({"Type": "network", "Action": "connect"}) is None
