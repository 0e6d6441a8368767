"""Every Verifier, Runtime and EventSource the daemon can be wired with implements the whole protocol (a
method added to the protocol and missed in one runtime's verifier killed the loop thread on its first start;
a `kind` missing from DockerRuntime was papered over by a getattr fallback in the controller), and every
runtime in the chooser's table has a `wire` that builds a RuntimeAdapter from those parts."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from supervisor.artifacts.verify import NoVerifier, Verifier
from supervisor.runtime import Runtime
from supervisor.runtime.adapter import EventSource, RuntimeAdapter, Wire
from supervisor.runtime.choose import ADAPTERS, wire_for
from supervisor.runtime.docker.events import DockerEventStream
from supervisor.runtime.docker.runtime import DockerRuntime
from supervisor.runtime.docker.verifier import LockVerifier
from supervisor.runtime.process.runtime import ProcessRuntime
from supervisor.runtime.process.verifier import BinaryVerifier

from .fakes import FakeRuntime, FakeVerifier

# Each registered runtime's parts: (runtime, verifier, event source or None). A runtime added to
# choose.ADAPTERS fails test_every_registered_runtime_is_listed_here until it is named here too.
PARTS: dict[str, tuple[type, type, type | None]] = {
    "docker": (DockerRuntime, LockVerifier, DockerEventStream),
    "process": (ProcessRuntime, BinaryVerifier, None),
}


def members(protocol: type) -> set[str]:
    """The public methods and properties a Protocol declares."""
    return {name for name in vars(protocol) if not name.startswith("_")}


def missing(cls: type, protocol: type) -> set[str]:
    return {m for m in members(protocol) if not hasattr(cls, m)
            or not (callable(getattr(cls, m)) or isinstance(getattr(cls, m), (property, str)))}


@pytest.mark.parametrize("cls", [LockVerifier, BinaryVerifier, NoVerifier, FakeVerifier])
def test_verifier_implements_every_protocol_method(cls: type) -> None:
    assert members(Verifier) >= {"check_model", "check_image", "confirm_model"}
    assert not missing(cls, Verifier), f"{cls.__name__} lacks {sorted(missing(cls, Verifier))}"


@pytest.mark.parametrize("cls", [DockerRuntime, ProcessRuntime, FakeRuntime])
def test_runtime_implements_every_protocol_member(cls: type) -> None:
    assert members(Runtime) >= {"kind", "call_count", "close", "maintain", "create", "logs"}
    assert not missing(cls, Runtime), f"{cls.__name__} lacks {sorted(missing(cls, Runtime))}"
    assert isinstance(getattr(cls, "kind"), str)


def test_every_registered_runtime_is_listed_here() -> None:
    assert set(ADAPTERS) == set(PARTS)


@pytest.mark.parametrize("kind", sorted(PARTS))
def test_every_registered_adapter_has_whole_parts_and_a_wire(kind: str) -> None:
    runtime, verifier, events = PARTS[kind]
    assert runtime.kind == kind                                  # type: ignore[attr-defined]
    assert not missing(runtime, Runtime) and not missing(verifier, Verifier)
    if events is not None:
        assert members(EventSource) == {"connected", "start", "close"}
        assert not {"start", "close"} - {m for m in vars(events) if callable(getattr(events, m))}
    wire = wire_for(kind)
    assert set(inspect.signature(wire).parameters) == set(inspect.signature(Wire.__call__).parameters) - {"self"}
    assert inspect.signature(wire).return_annotation in (RuntimeAdapter, "RuntimeAdapter")


def test_the_adapter_is_frozen_and_closes_its_runtime() -> None:
    rt = FakeRuntime()
    adapter = RuntimeAdapter(kind="docker", why="test", runtime=rt, verifier=FakeVerifier(), lock_view="images")
    with pytest.raises(dataclasses.FrozenInstanceError):
        adapter.kind = "process"                                 # type: ignore[misc]
    adapter.close()
    assert rt.closed and adapter.events is None
