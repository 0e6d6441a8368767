"""The one translation of Docker engine errors into the supervisor's (engine_errors), for the image
tools (images.py, probe.py) and the runtime (runtime/docker/runtime.py) alike.

Below the runtime on purpose: images.py and probe.py build and read images through the engine
without importing the runtime that runs models; runtime/docker/runtime.py re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import docker
import docker.errors
import requests.exceptions

from supervisor.errors import ResourceExhausted, RuntimeOperationError, RuntimeUnavailable, exhaustion

UNREACHABLE_HINT = ("start it (systemctl start docker) or set DOCKER_HOST, "
                    "and make sure this user may use its socket")


@contextmanager
def engine_errors(op: str, target: str, *, hint: str = "") -> Iterator[None]:
    """docker SDK and transport errors -> RuntimeOperationError / RuntimeUnavailable, `raise ... from e`.

    The one place an engine error is translated: the runtime, the image probe and
    the image build all go through it. `hint` says what to do when one call fails.
    """
    try:
        yield
    except docker.errors.APIError as e:
        raise RuntimeOperationError(
            f"docker {op} {target}: {e.explanation or e}" + (f": {hint}" if hint else "")) from e
    except (requests.exceptions.RequestException, docker.errors.DockerException, OSError) as e:
        if (cause := exhaustion(e)) is not None:   # our side ran out (EMFILE...): neither the engine nor the model
            raise ResourceExhausted(
                f"docker {op} {target}: the daemon is out of resources ({cause.strerror or cause}); retried later"
            ) from e
        if isinstance(e, requests.exceptions.RequestException):     # refused, timed out, cut mid-stream
            raise RuntimeUnavailable(f"docker {op} {target}: engine unreachable ({e}): {UNREACHABLE_HINT}") from e
        if isinstance(e, docker.errors.DockerException):
            raise RuntimeUnavailable(f"docker {op} {target}: {e}: {UNREACHABLE_HINT}") from e
        raise
