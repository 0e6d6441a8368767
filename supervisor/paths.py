"""Where llama-supervisor keeps things: one place to decide, overridable by env.

    LLAMA_SUPERVISOR_STATE_DIR   image lock, built source contexts   (root: /var/lib/llama-supervisor)
    LLAMA_SUPERVISOR_CACHE_DIR   downloaded sources and models      (root: /var/cache/llama-supervisor)
    LLAMA_SUPERVISOR_MANIFESTS   the manifest directory             (root: /etc/llama-supervisor/manifests)
    LLAMA_SUPERVISOR_SOCKET      the control socket                 (root: /run/llama-supervisor/control.sock)
    LLAMA_SUPERVISOR_IMAGE_REPO  the repository of built images     (llama-supervisor/llama-server)
    LLAMA_SUPERVISOR_KV_DIR      KV caches kept across stops         (<state dir>/kv)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
import stat
from pathlib import Path

from supervisor.errors import ConfigError


DEFAULT_IMAGE_REPO = "llama-supervisor/llama-server"


def image_repo() -> str:
    """Where `build` tags images and manifests render from: <repo>:<variant>.

    An override keeps a checkout that changes images/Dockerfile from retagging
    the images other checkouts on the same engine have locked.
    """
    return os.environ.get("LLAMA_SUPERVISOR_IMAGE_REPO") or DEFAULT_IMAGE_REPO


def _is_root() -> bool:
    return os.geteuid() == 0


def _home_dir(env: str, root_default: str, xdg: str, xdg_default: str) -> Path:
    if os.environ.get(env):
        return Path(os.environ[env])
    if _is_root():
        return Path(root_default)
    base = os.environ.get(xdg) or str(Path.home() / xdg_default)
    return Path(base) / "llama-supervisor"


def state_dir() -> Path:
    return _home_dir("LLAMA_SUPERVISOR_STATE_DIR", "/var/lib/llama-supervisor", "XDG_STATE_HOME", ".local/state")


def kv_dir() -> Path:
    """Where models' KV caches are kept across stops (core/kvcache.py): <state>/kv unless
    LLAMA_SUPERVISOR_KV_DIR says otherwise."""
    return Path(os.environ.get("LLAMA_SUPERVISOR_KV_DIR") or state_dir() / "kv")


def cache_dir() -> Path:
    return _home_dir("LLAMA_SUPERVISOR_CACHE_DIR", "/var/cache/llama-supervisor", "XDG_CACHE_HOME", ".cache")


def lock_path() -> Path:
    return Path(os.environ.get("LLAMA_SUPERVISOR_LOCK") or state_dir() / "images.lock.json")


def manifests_dir() -> Path:
    if os.environ.get("LLAMA_SUPERVISOR_MANIFESTS"):
        return Path(os.environ["LLAMA_SUPERVISOR_MANIFESTS"])
    return Path("/etc/llama-supervisor/manifests") if _is_root() and Path("/etc/llama-supervisor").exists() \
        else Path("manifests")


def socket_path() -> Path:
    if os.environ.get("LLAMA_SUPERVISOR_SOCKET"):
        return Path(os.environ["LLAMA_SUPERVISOR_SOCKET"])
    if _is_root():
        return Path("/run/llama-supervisor/control.sock")
    return user_socket_path(os.getuid(), os.environ.get("XDG_RUNTIME_DIR"))


def user_socket_path(uid: int, runtime_dir: str | None, *, tmp: Path = Path("/tmp")) -> Path:
    """A user's socket: under XDG_RUNTIME_DIR (logind's, 0700 and theirs), else under a private
    directory in /tmp that is created or checked (`private_dir`) first."""
    if runtime_dir:
        return Path(runtime_dir) / "llama-supervisor" / "control.sock"
    return private_dir(tmp / f"llama-supervisor-{uid}", uid=uid) / "llama-supervisor" / "control.sock"


def private_dir(path: Path, *, uid: int | None = None) -> Path:
    """`path` as a directory only `uid` (default: ours) can write: created 0700 if absent, else checked.

    In a shared /tmp anyone may create `/tmp/llama-supervisor-<uid>` first (mode 0777, or a
    symlink to their own directory) and then swap in a socket of their own, reading or forging
    control traffic. So it must be a real directory (not a symlink), owned by `uid`, with no
    group or other write; anything else is refused, naming the directory and the fix.
    """
    uid = os.getuid() if uid is None else uid
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise ConfigError(f"cannot create the runtime directory {path}: {e.strerror or e} "
                          "(fix: set XDG_RUNTIME_DIR or LLAMA_SUPERVISOR_SOCKET)") from e
    st = os.lstat(path)
    fix = (f"(fix: remove it if you did not make it, 'rm -rf {path}', then run again; "
           "or set XDG_RUNTIME_DIR or LLAMA_SUPERVISOR_SOCKET)")
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"the runtime directory {path} is not a directory (a symlink or another file): "
                          f"someone else may have made it {fix}")
    if st.st_uid != uid:
        raise ConfigError(f"the runtime directory {path} belongs to uid {st.st_uid}, not to uid {uid}: "
                          f"its owner could replace the control socket {fix}")
    if st.st_mode & 0o022:
        raise ConfigError(f"the runtime directory {path} has mode {stat.S_IMODE(st.st_mode):04o}: others may "
                          f"write to it and replace the control socket (fix: 'chmod 700 {path}')")
    return path


# The variables that name each location; a value set in the environment is the operator's choice.
STATE_ENV = "LLAMA_SUPERVISOR_STATE_DIR"
CACHE_ENV = "LLAMA_SUPERVISOR_CACHE_DIR"
LOCK_ENV = "LLAMA_SUPERVISOR_LOCK"
MANIFESTS_ENV = "LLAMA_SUPERVISOR_MANIFESTS"


@dataclass(frozen=True)
class Locations:
    """Where one process keeps its local state: what a running daemon reports on its control socket,
    so that `llama-supervisorctl` in another shell works on the same lock, cache and manifests."""

    state_dir: Path
    cache_dir: Path
    lock: Path
    manifests: Path

    @classmethod
    def current(cls, *, lock: Path | None = None, manifests: Path | None = None) -> Locations:
        """This process's locations: the environment and the defaults, with the lock and the
        manifest directory it was given on its command line."""
        return cls(state_dir().absolute(), cache_dir().absolute(), (lock or lock_path()).absolute(),
                   (manifests or manifests_dir()).absolute())

    def to_json(self) -> dict[str, str]:
        return {"state_dir": str(self.state_dir), "cache_dir": str(self.cache_dir), "lock": str(self.lock),
                "manifests": str(self.manifests)}

    def env(self) -> dict[str, str]:
        """The variables that make `paths` in another process answer with these locations."""
        return {STATE_ENV: str(self.state_dir), CACHE_ENV: str(self.cache_dir), LOCK_ENV: str(self.lock),
                MANIFESTS_ENV: str(self.manifests)}
