"""The runtime as the daemon sees it: the `Runtime` protocol, and what every runtime shares.

Two adapters implement the protocol: `DockerRuntime` (runtime/docker/, the docker SDK)
and `ProcessRuntime` (runtime/process/, llama-server as a host process); runtime/choose.py
picks one. Unit tests use a hand-written fake. Every method is one or a few engine calls and
raises RuntimeUnavailable / RuntimeOperationError, never a docker exception.

Shared here: the names runtimes give models (`container_name`, `successor_name`, `check_instance`), the label
filter that finds a daemon's own containers (`owned_filter`; the labels live in
artifacts/labels.py), a host process's RSS (`process_rss`) and a model's log tail made fit
for a status line (`clean_log`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol

from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import ContainerSpec
from supervisor.artifacts.labels import (
    DEFAULT_INSTANCE,
    LABEL_HASH,
    LABEL_IMAGE,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_MODEL,
    LABEL_PURPOSE,
    PURPOSE_INSPECT,
    inspect_labels,
)
from supervisor.errors import ConfigError
from supervisor.core.text import printable

# The labels live in supervisor/artifacts/labels.py (the image probe sets them too); named here for the runtime's users.
__all__ = [
    "DEFAULT_INSTANCE", "LABEL_HASH", "LABEL_IMAGE", "LABEL_INSTANCE", "LABEL_MANAGED", "LABEL_MODEL",
    "LABEL_PURPOSE", "PURPOSE_INSPECT", "inspect_labels", "owned_filter", "NAME_PREFIX", "INSTANCE_PATTERN",
    "check_instance", "process_rss", "MAX_TAIL_BYTES", "MAX_LINE_CHARS", "clean_log", "container_name", "Runtime",
    "PAIR_SUFFIX", "successor_name",
]


def owned_filter(instance: str) -> list[str]:
    """The Docker label filter for this daemon's containers (list and events)."""
    return [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"]


NAME_PREFIX = "llama-supervisor-"
# An instance name goes into container names (Docker allows [a-zA-Z0-9][a-zA-Z0-9_.-]+, of any
# length) and into file and cgroup paths (models.<instance>.state.json, processes/<instance>/):
# Docker's characters, no path separator, at most 63 like a model name.
INSTANCE_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")


def check_instance(instance: str) -> str:
    """The instance name, if it is one (see INSTANCE_PATTERN); else a ConfigError that says the fix."""
    if not INSTANCE_PATTERN.fullmatch(instance):
        shown = instance if len(instance) <= 70 else instance[:67] + "..."
        raise ConfigError(f"--instance {shown!r} is not an instance name: use at most 63 letters, digits, "
                          "'-', '_' and '.', starting with a letter or digit (e.g. --instance two)")
    return instance


def process_rss(pid: int) -> int | None:
    """A host process's resident set in bytes (/proc/PID/status VmRSS), None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# A model's log is untrusted bytes: the tail that becomes a model's `reason` (status, logs,
# metrics) is cut to size and stripped of terminal escapes and other control characters,
# whichever runtime ran it.
MAX_TAIL_BYTES = 64 * 1024
MAX_LINE_CHARS = 300


def clean_log(raw: bytes) -> str:
    """Log bytes as text fit for a status line: valid UTF-8, no control characters, lines cut short."""
    text = printable(raw[-MAX_TAIL_BYTES:].decode(errors="replace").replace("\t", " "))
    return "".join((ln if len(ln) <= MAX_LINE_CHARS else ln[:MAX_LINE_CHARS] + "...") + "\n"
                   for ln in text.splitlines())


def container_name(model: str, instance: str = DEFAULT_INSTANCE) -> str:
    """llama-supervisor-<model> for the default instance (its containers keep the names they have),
    llama-supervisor-<instance>-<model> for any other: two daemons on one engine may each run a model
    of the same name. Daemons find their containers by label, never by name; a name still held by
    another instance (instance `a`'s model `b-c` and instance `a-b`'s model `c`) is refused on create,
    naming that instance."""
    return NAME_PREFIX + (model if instance == DEFAULT_INSTANCE else f"{instance}-{model}")


# The second name of a model's pair (blue/green), for a container started beside the one that serves
# (start-first recreate). '_' is in no model name ([a-z0-9][a-z0-9-]*), so a pair's second name can
# never be another model's first name.
PAIR_SUFFIX = "_b"


def successor_name(model: str, instance: str = DEFAULT_INSTANCE, *, beside: str) -> str:
    """The name for a new container of `model` started while the container named `beside` still runs:
    whichever of the pair (container_name, container_name + PAIR_SUFFIX) that one does not hold."""
    first = container_name(model, instance)
    return first + PAIR_SUFFIX if beside == first else first


class Runtime(Protocol):
    """What the daemon calls on the runtime it runs models with (DockerRuntime, ProcessRuntime, the tests' fake)."""

    @property
    def kind(self) -> str:
        """"docker" or "process": the adapter's name (status, the start-up log)."""

    @property
    def call_count(self) -> int:
        """Engine calls made so far (logged at exit)."""

    def list_managed(self) -> list[ObservedContainer]:
        """Every container with the managed label, running or not (one engine call)."""

    def inspect(self, container_id: str) -> ObservedContainer | None:
        """None when the container no longer exists."""

    @property
    def successors(self) -> bool:
        """Whether a second container of a model can run beside the first (start-first recreates)."""

    @property
    def announces_ready(self) -> bool:
        """Whether its servers say when they have loaded (ContainerEvent READY), so that a starting model is
        probed then rather than polled for (the process runtime's: runtime/process/readiness.py)."""

    def create(self, spec: ContainerSpec, *, beside: str = "", held: bool = False) -> str:
        """Create (not start) the model's container; returns its ID. `beside`: the name of the model's
        container that keeps running meanwhile (the new one takes the other name of the pair:
        `successor_name`). `held`: an on-demand model's, which `prepare` may start ahead."""

    def prepare(self, container_id: str) -> None:
        """The start of this stopped container comes once another model has stopped (a swap): do now,
        beside that stop, what needs none of the model's memory (Docker: the engine's start, up to the
        image's gate before llama-server). Never runs the model; the start stays the caller's. Never raises:
        a failed head start leaves a plain start."""

    def start(self, container_id: str) -> None: ...

    def stop(self, container_id: str, *, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL after timeout_s."""

    def kill(self, container_id: str) -> None: ...

    def unpause(self, container_id: str) -> None: ...

    def remove(self, container_id: str) -> None:
        """Force-remove; a container already gone is not an error."""

    def log_tail(self, container_id: str, *, lines: int = 20) -> str: ...

    def logs(self, container_id: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]: ...

    def memory_usage(self, container_id: str) -> int | None:
        """Bytes the container uses now (its cgroup's figure), None when it cannot be read cheaply."""

    def maintain(self) -> None:
        """Periodic upkeep on each resync (the process runtime rotates its logs); no engine call."""

    def close(self) -> None:
        """At exit: release the engine client or stop watching; the models keep running."""
