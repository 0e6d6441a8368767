"""Host files a manifest asks the daemon to mount into a container: regular files only, never system trees.

A manifest names host paths (source.path, server.api_key_file) that become
read-only bind mounts. Each is resolved through symlinks once, when the
manifests are read, and the *resolved* path is what render mounts and what the
verifier hashes; so a symlink the manifest names cannot be pointed elsewhere
between the check and the mount. Refused, with the manifest's file:line:
anything that is not a regular file (a directory, a device, a FIFO, a socket:
the Docker socket above all) and anything under a system tree (REFUSED; a key
file may live under /etc), by the path as written or as resolved.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass

# Trees whose files are the host's own configuration, devices or kernel
# interfaces: a model or a key never lives there, and mounting one into a
# container would hand it host secrets or the Docker socket (/var/run/docker.sock).
REFUSED: tuple[str, ...] = ("/proc", "/sys", "/dev", "/etc", "/run", "/var/run", "/boot")
# Key files conventionally live under /etc (e.g. /etc/llama-supervisor/keys), so /etc is allowed for them.
KEY_REFUSED: tuple[str, ...] = tuple(t for t in REFUSED if t != "/etc")


@dataclass(frozen=True)
class HostFile:
    given: str
    resolved: str
    size: int            # 0 when the file does not exist (yet): the verifier reports that at launch
    exists: bool


def refused_tree(path: str, *, refused: tuple[str, ...] = REFUSED) -> str | None:
    """The system tree `path` lies in (pure, on the string), or None."""
    norm = posixpath.normpath(path)
    return next((tree for tree in refused if _under(norm, tree)), None)


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree + "/")


def kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


def inspect(path: str, *, what: str, refused: tuple[str, ...] = REFUSED) -> tuple[HostFile, str | None]:
    """Resolve `path` and check it; the problem (without file:line) or None.

    A file that does not exist is not a problem here (the launch-time check says
    'missing, run fetch-model'); one that exists must be a regular file outside
    the refused trees, by its given and its resolved path.
    """
    resolved = os.path.realpath(path)
    for p in (path, resolved):
        tree = refused_tree(p, refused=refused)
        if tree is not None:
            via = "" if p == path else f" (it resolves to {resolved})"
            return HostFile(path, resolved, 0, False), (
                f"{what} {path}{via} is under {tree}, a system directory that is never mounted into a"
                f" container (fix: keep the file in a directory of its own, e.g. /srv/models)"
            )
    try:
        st = os.stat(resolved)
    except FileNotFoundError:
        return HostFile(path, resolved, 0, False), None
    except OSError as e:
        return HostFile(path, resolved, 0, False), f"{what} {path} cannot be read: {e.strerror or e} (fix: check it)"
    if not stat.S_ISREG(st.st_mode):
        via = "" if resolved == path else f" (it resolves to {resolved})"
        return HostFile(path, resolved, 0, True), (
            f"{what} {path}{via} is {kind_of(st.st_mode)}, not a regular file (fix: point it at the file itself)"
        )
    return HostFile(path, resolved, st.st_size, True), None
