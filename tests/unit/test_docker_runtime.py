"""What DockerRuntime asks the engine for, without an engine: hardening and labels are values."""

from __future__ import annotations

import re
from typing import Any

import docker.errors
import pytest

from supervisor.core.spec import GpuRequest
from supervisor.errors import ConfigError, RuntimeOperationError
from supervisor.runtime import (
    LABEL_HASH,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_MODEL,
    check_instance,
    container_name,
)
from supervisor.runtime.docker.runtime import (
    DockerRuntime,
    container_kwargs,
    host_config_kwargs,
    observed_from_inspect,
    observed_from_list,
)
from supervisor.runtime.docker.events import parse

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
    assert ck["image"] == spec.image_id and ck["user"] == "65532:65532" and ck["name"] == "llama-supervisor-blue-gemma"
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


# --- container names per instance (issue 20.2) ------------------------------------------------

DOCKER_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")     # the engine's rule (moby daemon/names)


def test_container_names_carry_the_instance_unless_it_is_the_default() -> None:
    assert container_name("gemma") == container_name("gemma", "default") == "llama-supervisor-gemma"
    assert container_name("gemma", "two") == "llama-supervisor-two-gemma"
    longest = container_name("m" * 63, "I_n.s-" + "t" * 57)
    assert DOCKER_NAME.match(longest) and len(longest) == 17 + 63 + 1 + 63
    assert container_kwargs(desired("gemma").spec)["name"] == "llama-supervisor-gemma"


@pytest.mark.parametrize("bad", ["", "-x", ".x", "../etc", "a/b", "two words", "ütf", "x" * 64, "a\nb", "x\n"])
def test_an_instance_name_outside_dockers_name_rules_is_refused_with_the_fix(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"is not an instance name: use at most 63 letters.*--instance two"):
        check_instance(bad)


def test_the_daemon_refuses_a_bad_instance_before_it_touches_anything(tmp_path: Any) -> None:
    from supervisor.cli import daemon

    with pytest.raises(ConfigError, match="'../x' is not an instance name"):
        daemon.run(manifests=tmp_path / "absent", lock_path=tmp_path / "lock", socket_path=tmp_path / "s",
                   socket_group=None, metrics_port=None, resync_interval=1, stop_timeout=1,
                   stop_models_on_exit=False, instance="../x")
    assert check_instance("test-0a1b2c3d4e5f") == "test-0a1b2c3d4e5f"


class _Conflict:
    """The engine's HTTP reply to a create whose name is in use (what APIError reads of it)."""

    status_code, reason, url = 409, "Conflict", "http+docker://localhost/containers/create"


class FakeEngine:
    """One Docker engine that two daemons share: containers by name, 409 for a name in use."""

    def __init__(self) -> None:
        self.api = self
        self.by_name: dict[str, dict[str, Any]] = {}

    def networks(self, names: list[str]) -> list[dict[str, str]]:
        return [{"Name": n} for n in names]

    def create_host_config(self, **kw: Any) -> dict[str, Any]:
        return kw

    def create_container(self, *, host_config: Any, name: str, labels: dict[str, str], image: str,
                         **kw: Any) -> dict[str, str]:
        if name in self.by_name:
            raise docker.errors.APIError("Conflict", response=_Conflict(),  # type: ignore[arg-type]
                                         explanation=f'The container name "/{name}" is already in use')
        return {"Id": self.add(name, labels, image)}

    def add(self, name: str, labels: dict[str, str], image: str = "sha256:1") -> str:
        cid = f"{len(self.by_name) + 1:064x}"
        self.by_name[name] = {"Id": cid, "Name": f"/{name}", "Image": image, "Config": {"Labels": labels},
                              "State": {"Status": "created"}}
        return cid

    def inspect_container(self, ref: str) -> dict[str, Any]:
        for name, d in self.by_name.items():
            if ref in (name, d["Id"]):
                return d
        raise docker.errors.NotFound(f"no container {ref}")

    def containers(self, *, all: bool, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        wanted = dict(f.split("=", 1) for f in filters["label"])
        return [{"Id": d["Id"], "Names": [d["Name"]], "Labels": d["Config"]["Labels"], "State": "created",
                 "Status": "Created", "ImageID": d["Image"]}
                for d in self.by_name.values() if wanted.items() <= d["Config"]["Labels"].items()]


def test_two_instances_on_one_engine_each_run_a_model_of_the_same_name() -> None:
    engine = FakeEngine()
    spec = desired("gemma").spec
    one, two = DockerRuntime(engine, instance="default"), DockerRuntime(engine, instance="two")  # type: ignore[arg-type]
    a, b = one.create(spec), two.create(spec)
    assert sorted(engine.by_name) == ["llama-supervisor-gemma", "llama-supervisor-two-gemma"]
    assert [(c.id, c.model) for c in one.list_managed()] == [(a, "gemma")]
    assert [(c.id, c.model) for c in two.list_managed()] == [(b, "gemma")]


def test_containers_made_before_the_instance_was_in_the_name_are_still_found_by_label() -> None:
    engine = FakeEngine()
    spec = desired("gemma").spec
    old = engine.add("llama-supervisor-gemma", container_kwargs(spec, "two")["labels"])   # by an older daemon
    two = DockerRuntime(engine, instance="two")  # type: ignore[arg-type]
    assert [(c.id, c.name, c.config_hash) for c in two.list_managed()] == [
        (old, "llama-supervisor-gemma", spec.config_hash())]
    # a recreate makes the new container under the new name, beside the default instance's
    assert two.create(spec) and "llama-supervisor-two-gemma" in engine.by_name


def test_a_name_another_instance_holds_is_refused_naming_that_instance() -> None:
    engine = FakeEngine()
    engine.add("llama-supervisor-a-b-c", {LABEL_MANAGED: "true", LABEL_INSTANCE: "a", LABEL_MODEL: "b-c"})
    with pytest.raises(RuntimeOperationError, match="belongs to llama-supervisor instance 'a', not 'a-b'"):
        DockerRuntime(engine, instance="a-b").create(desired("c").spec)  # type: ignore[arg-type]
    assert list(engine.by_name) == ["llama-supervisor-a-b-c"]
