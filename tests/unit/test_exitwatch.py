"""exitwatch.gone on real pidfds of this test's own children: an exit is seen, a live process is not, and a
descriptor that is not open is an error rather than an exit (a stop must not return early on it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from supervisor.errors import RuntimeOperationError
from supervisor.runtime.docker import exitwatch

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfd_open needs Linux 5.3")


def test_a_live_process_is_not_gone_and_its_exit_is_seen_zombie_or_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    fd = os.pidfd_open(child.pid)
    try:
        assert not exitwatch.gone(fd, 0)
        assert not exitwatch.gone(fd, 0.05)
        assert child.stdin is not None
        child.stdin.close()                 # it exits; not reaped yet: a zombie
        assert exitwatch.gone(fd, 10)
        child.wait()                        # reaped
        assert exitwatch.gone(fd, 0)
    finally:
        os.close(fd)


def test_a_closed_descriptor_is_an_error_not_an_exit() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        fd = os.pidfd_open(child.pid)
        os.close(fd)
        with pytest.raises(RuntimeOperationError, match="not open"):
            exitwatch.gone(fd, 0)
    finally:
        child.kill()
        child.wait()
