"""The one exception tree of llama-supervisor.

    SupervisorError                 base; `exit_code` is what the CLI exits with
    ├── ConfigError                 a manifest, a profile or a setting is wrong (file:line in message)
    │   └── ManifestError           one or more manifest problems, each with file, line and fix
    ├── VerificationError           something does not match what was pinned: never retried
    │   ├── SourceMismatch          llama.cpp source tarball SHA-256
    │   ├── ModelMismatch           model file SHA-256, missing file or not a GGUF
    │   ├── ImageMismatch           image ID, binary SHA-256, version or flags differ from the lock
    │   └── GpuUnavailable          a GPU profile on an engine without the NVIDIA container runtime
    ├── BuildError                  an image build failed (the last build log lines are in the message)
    ├── FetchError                  a source or model could not be obtained (retryable: run the command again)
    ├── RegistryError               a registry refused or could not be reached (push, pull, manifest lists)
    ├── RetryableError              the loop tries the step again later (catch this, not its children one by one)
    │   ├── DaemonSideError         the daemon itself cannot act now: never a model's failure
    │   │   ├── RuntimeUnavailable  the container runtime (Docker) cannot be reached
    │   │   └── ResourceExhausted   the daemon is out of descriptors or memory (EMFILE, ENFILE, ENOMEM, ENOBUFS)
    │   └── RuntimeOperationError   one runtime call failed (create, start, stop...)
    └── ControlError                the control socket: daemon unreachable, unknown model, bad request

Library code raises these, translated at the edge with ``raise ... from e``;
only the CLI turns them into exit codes.
"""

from __future__ import annotations

import errno

# errno values that say the daemon (or the host) ran out of something, not that the peer failed
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class SupervisorError(Exception):
    """Base of every error llama-supervisor raises on purpose."""

    exit_code: int = 1
    retryable: bool = False


class ConfigError(SupervisorError):
    exit_code = 2


class ManifestError(ConfigError):
    """Every problem found in a set of manifests; `problems` keeps them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class VerificationError(SupervisorError):
    exit_code = 3


class SourceMismatch(VerificationError):
    pass


class ModelMismatch(VerificationError):
    pass


class ImageMismatch(VerificationError):
    pass


class GpuUnavailable(VerificationError):
    pass


class BuildError(SupervisorError):
    exit_code = 1


class FetchError(SupervisorError):
    exit_code = 1
    retryable = True


class RegistryError(SupervisorError):
    exit_code = 1


class RetryableError(SupervisorError):
    """A step that may succeed when tried again: the loop catches this class and retries later."""

    retryable = True


class DaemonSideError(RetryableError):
    """The daemon could not do its part (the engine is unreachable, it is out of descriptors).

    Whatever it was doing for a model is retried later; it never counts as that model's
    failure, so an attack on the daemon cannot drive the models to FATAL.
    """

    exit_code = 4


class RuntimeUnavailable(DaemonSideError):
    exit_code = 4


class ResourceExhausted(DaemonSideError):
    exit_code = 1


class RuntimeOperationError(RetryableError):
    pass


class ControlError(SupervisorError):
    exit_code = 4


def exhaustion(e: BaseException) -> OSError | None:
    """The OSError with an EXHAUSTION_ERRNOS errno in `e`'s chain (`e`, its __cause__ and __context__), if any.

    httpx, requests and the docker SDK wrap the socket's OSError in their own types, one or
    more levels down; the chain is followed at most 16 links (a cycle ends it too).
    """
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo and len(seen) < 16:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in EXHAUSTION_ERRNOS:
            return cur
        todo += [x for x in (cur.__cause__, cur.__context__) if x is not None]
    return None
