"""The labels that say whose a container is: a model's (managed, model, config hash, instance), or a
throwaway inspect container's that reads facts from an image (inspect_labels).

Plain constants, no docker import: the image probe (probe.py) and the runtime (runtime/__init__.py,
which re-exports them) both set them.
"""

from __future__ import annotations

LABEL_MANAGED = "io.llama-supervisor.managed"
LABEL_MODEL = "io.llama-supervisor.model"
LABEL_HASH = "io.llama-supervisor.config-hash"
# Which daemon owns the container: two daemons on one engine (a test run beside
# `make run`, two services) must never take each other's containers for orphans.
LABEL_INSTANCE = "io.llama-supervisor.instance"
DEFAULT_INSTANCE = "default"


# A throwaway container that reads facts from an image (its binary's hash, its
# --version and --help): `purpose=inspect`, `managed=false`, no model, so that
# owned_filter never lists it and no daemon adopts or removes it as a model.
LABEL_PURPOSE = "io.llama-supervisor.purpose"
LABEL_IMAGE = "io.llama-supervisor.image"
PURPOSE_INSPECT = "inspect"


def inspect_labels(image: str, *, instance: str | None = None) -> dict[str, str]:
    """Labels of an inspect container: whose it is (a daemon's instance, empty from the CLI), which image it reads.

    A container inherits its image's labels: every label a daemon reads is set
    here, so a wrong image labelled `managed=true` cannot pass its probe off as a model.
    """
    return {LABEL_PURPOSE: PURPOSE_INSPECT, LABEL_MANAGED: "false", LABEL_MODEL: "", LABEL_HASH: "",
            LABEL_INSTANCE: instance or "", LABEL_IMAGE: image}
