"""The one exception tree of llama-supervisor.

    SupervisorError                 base; `exit_code` is what the CLI exits with
    ├── ConfigError                 a manifest, a profile or a setting is wrong (file:line in message)
    │   └── ManifestError           one or more manifest problems, each with file, line and fix
    ├── VerificationError           something does not match what was pinned: never retried
    │   ├── SourceMismatch          llama.cpp source tarball SHA-256
    │   ├── ModelMismatch           model file SHA-256, missing file or not a GGUF
    │   └── ImageMismatch           image ID, binary SHA-256, version or flags differ from the lock
    ├── BuildError                  an image build failed (the last build log lines are in the message)
    ├── FetchError                  a source or model could not be obtained
    ├── RuntimeUnavailable          the container runtime (Docker) cannot be reached: retryable
    ├── RuntimeOperationError       one runtime call failed (create, start, stop...): retryable
    └── ControlError                the control socket: daemon unreachable, unknown model, bad request

Library code raises these, translated at the edge with ``raise ... from e``;
only the CLI turns them into exit codes.
"""

from __future__ import annotations


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


class BuildError(SupervisorError):
    exit_code = 1


class FetchError(SupervisorError):
    exit_code = 1
    retryable = True


class RuntimeUnavailable(SupervisorError):
    exit_code = 4
    retryable = True


class RuntimeOperationError(SupervisorError):
    retryable = True


class ControlError(SupervisorError):
    exit_code = 4
