"""Host tools some unit tests run (gpg, systemd-analyze): missing on a laptop, the test skips and says
why; under CI (CI set, as for the Docker engine in tests/conftest.py) a missing tool is a failure,
since `make test` installs them (the Makefile's `tools` target)."""

from __future__ import annotations

import os
import shutil

import pytest


def require(*tools: str, why: str = "") -> None:
    """Skip the calling test when one of `tools` is not on PATH; fail instead under CI."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    reason = f"{' and '.join(missing)} not on PATH{': ' + why if why else ''} (fix: 'make tools' as root)"
    if os.environ.get("CI"):
        pytest.fail(f"CI needs {reason}")
    pytest.skip(reason)
