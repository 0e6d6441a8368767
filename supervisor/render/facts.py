"""The I/O load_desired needs before it renders: where each model file is, its size, its GGUF facts
(read once per file version), and the host files a manifest names, resolved and checked (hostfile)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from supervisor.artifacts import gguf, hostfile, modelsrc
from supervisor.artifacts.gguf import GgufFacts
from supervisor.manifest.loader import ManifestSet, Origin
from supervisor.manifest.schema import ModelManifest


def model_host_path(manifest: ModelManifest) -> Path:
    """Where the model file is on the host: source.path as given, else the model cache."""
    return modelsrc.host_path(manifest.source)


_FACTS: dict[tuple[str, int, int], GgufFacts | None] = {}


def model_facts(path: Path, size: int, budget: gguf.Budget) -> GgufFacts | None:
    """GGUF facts, read once per file version (path, size, mtime) in a long-lived process."""
    try:
        key = (str(path), size, os.stat(path).st_mtime_ns)
    except OSError:
        return None
    if key in _FACTS:
        return _FACTS[key]
    found = gguf.facts(path, budget)
    if found is not None:       # an unknown may be the shared budget's doing: read it again next time
        if len(_FACTS) > 256:
            _FACTS.clear()
        _FACTS[key] = found
    return found


def stat_sizes(manifests: ManifestSet) -> dict[str, int]:
    """Each model's file size in bytes (0 when the file is absent): the only I/O render needs."""
    sizes = {}
    for name, manifest in manifests.models.items():
        try:
            sizes[name] = os.stat(model_host_path(manifest)).st_size
        except OSError:
            sizes[name] = 0
    return sizes


@dataclass(frozen=True)
class HostFiles:
    """The host files of a set of manifests, resolved and checked (by model name)."""

    sizes: dict[str, int]
    models: dict[str, str]       # resolved model file paths: what is hashed and mounted
    keys: dict[str, str]         # resolved api_key_file paths
    problems: list[str]
    refused: frozenset[str]      # models with a problem here


def host_files(manifests: ManifestSet) -> HostFiles:
    """Resolve and check every model's source file and key file (supervisor.artifacts.hostfile): the I/O render needs."""
    sizes: dict[str, int] = {}
    models: dict[str, str] = {}
    keys: dict[str, str] = {}
    problems: list[str] = []
    refused: set[str] = set()
    for name, manifest in manifests.models.items():
        origin = manifests.model_origins.get(name, Origin("<unknown>", 1))
        key = "source.path" if manifest.source.path else "source"
        f, problem = hostfile.inspect(str(model_host_path(manifest)), what=f"model '{name}': model file")
        if problem:
            problems.append(f"{origin.at(key)}: {problem}")
            refused.add(name)
        models[name], sizes[name] = f.resolved, f.size
        if manifest.server.api_key_file is not None:
            k, problem = hostfile.inspect(manifest.server.api_key_file, what=f"model '{name}': api_key_file",
                                          refused=hostfile.KEY_REFUSED)
            if problem:
                problems.append(f"{origin.at('server.api_key_file')}: {problem}")
                refused.add(name)
            keys[name] = k.resolved
    return HostFiles(sizes, models, keys, problems, frozenset(refused))
