"""Every Verifier the daemon can be wired with implements the whole protocol (a method added to the
protocol and missed in one runtime's verifier killed the loop thread on its first start)."""

from __future__ import annotations

import inspect

import pytest

from supervisor.artifacts.binaries import BinaryVerifier
from supervisor.artifacts.verify import LockVerifier, NoVerifier, Verifier

from .fakes import FakeVerifier

PROTOCOL = {name for name, _ in inspect.getmembers(Verifier, inspect.isfunction) if not name.startswith("_")}


@pytest.mark.parametrize("cls", [LockVerifier, BinaryVerifier, NoVerifier, FakeVerifier])
def test_verifier_implements_every_protocol_method(cls: type) -> None:
    assert PROTOCOL >= {"check_model", "check_image", "confirm_model"}
    missing = {m for m in PROTOCOL if not callable(getattr(cls, m, None))}
    assert not missing, f"{cls.__name__} lacks {sorted(missing)}"
