"""Every Verifier and Runtime the daemon can be wired with implements the whole protocol (a method added to
the protocol and missed in one runtime's verifier killed the loop thread on its first start; a `kind` missing
from DockerRuntime was papered over by a getattr fallback in the controller)."""

from __future__ import annotations

import pytest

from supervisor.artifacts.binaries import BinaryVerifier
from supervisor.artifacts.verify import LockVerifier, NoVerifier, Verifier
from supervisor.runtime import Runtime
from supervisor.runtime.docker.runtime import DockerRuntime
from supervisor.runtime.process.runtime import ProcessRuntime

from .fakes import FakeRuntime, FakeVerifier


def members(protocol: type) -> set[str]:
    """The public methods and properties a Protocol declares."""
    return {name for name in vars(protocol) if not name.startswith("_")}


def missing(cls: type, protocol: type) -> set[str]:
    return {m for m in members(protocol)
            if not (callable(getattr(cls, m, None)) or isinstance(getattr(cls, m, None), (property, str)))}


@pytest.mark.parametrize("cls", [LockVerifier, BinaryVerifier, NoVerifier, FakeVerifier])
def test_verifier_implements_every_protocol_method(cls: type) -> None:
    assert members(Verifier) >= {"check_model", "check_image", "confirm_model"}
    assert not missing(cls, Verifier), f"{cls.__name__} lacks {sorted(missing(cls, Verifier))}"


@pytest.mark.parametrize("cls", [DockerRuntime, ProcessRuntime, FakeRuntime])
def test_runtime_implements_every_protocol_member(cls: type) -> None:
    assert members(Runtime) >= {"kind", "call_count", "close", "maintain", "create", "logs"}
    assert not missing(cls, Runtime), f"{cls.__name__} lacks {sorted(missing(cls, Runtime))}"
    assert isinstance(getattr(cls, "kind"), str)
