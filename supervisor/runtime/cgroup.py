"""A cgroup v2 subtree the daemon owns, for the memory and pids limits of model processes.

<root>/llama-supervisor/<instance>/<process id>/ with memory.max, memory.swap.max=0
and pids.max. Usable only where cgroup v2 is mounted at the root with the memory and
pids controllers and the daemon may create cgroups there (root on a unified host);
`reason` says why not otherwise, and the runtime logs it at start.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids")


class Cgroups:
    def __init__(self, instance: str, *, root: Path = DEFAULT_ROOT) -> None:
        self.root = root
        self.base = root / "llama-supervisor" / instance
        self.reason: str | None = self._set_up()

    @property
    def available(self) -> bool:
        return self.reason is None

    def _set_up(self) -> str | None:
        controllers = self.root / "cgroup.controllers"
        if not controllers.is_file():
            return f"cgroup v2 is not mounted at {self.root} (a v1 or hybrid hierarchy)"
        have = controllers.read_text().split()
        missing = [c for c in CONTROLLERS if c not in have]
        if missing:
            return f"cgroup v2 at {self.root} lacks the {', '.join(missing)} controller(s)"
        try:
            for parent in (self.root, self.root / "llama-supervisor"):
                if parent != self.root:
                    parent.mkdir(exist_ok=True)
                enabled = (parent / "cgroup.subtree_control").read_text().split()
                want = [f"+{c}" for c in CONTROLLERS if c not in enabled]
                if want:
                    (parent / "cgroup.subtree_control").write_text(" ".join(want))
            self.base.mkdir(exist_ok=True)
            enabled = (self.base / "cgroup.subtree_control").read_text().split()
            want = [f"+{c}" for c in CONTROLLERS if c not in enabled]
            if want:
                (self.base / "cgroup.subtree_control").write_text(" ".join(want))
        except OSError as e:
            return f"cannot create a cgroup under {self.root} ({e.strerror or e})"
        return None

    def prepare(self, name: str, *, memory_bytes: int | None, pids_limit: int) -> Path | None:
        """A leaf cgroup for one process; returns its cgroup.procs (the launcher writes its pid there)."""
        if not self.available:
            return None
        leaf = self.base / name
        leaf.mkdir(exist_ok=True)
        (leaf / "memory.max").write_text(str(memory_bytes) if memory_bytes is not None else "max")
        swap = leaf / "memory.swap.max"
        if swap.exists():
            swap.write_text("0")
        (leaf / "pids.max").write_text(str(pids_limit))
        return leaf / "cgroup.procs"

    def remove(self, name: str) -> None:
        if not self.available:
            return
        try:
            (self.base / name).rmdir()
        except OSError:
            pass        # still populated (the process is exiting) or gone: the next remove retries
