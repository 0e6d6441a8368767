"""The Runtime protocol on host processes: the verified llama-server binary, without Docker.

One record per "container" under <state dir>/processes/<instance>/records/<id>.json
holds what proves a process is ours: pid, start time (/proc/<pid>/stat field 22)
and the exact command line. A pid is signalled only through a pidfd opened while
that proof holds, so a reused pid is never signalled nor adopted. Each process
runs in its own session (it outlives a daemon restart, as a container does); a
restarted daemon adopts it when the proof holds and the config hash matches.

Launch goes through a tiny Python launcher (no preexec_fn in a threaded daemon):
it joins the cgroup, sets rlimits, drops to the unprivileged uid, enters a
private working directory and execs the binary through the very file descriptor
the runtime hashed, so the SHA-256 checked is the one executed. A pipe closed on
exec tells the runtime the exec happened (or carries the launcher's error).

Deaths are seen through pidfds on one selector thread, posted as the same
ContainerEvent(DIE) the Docker events stream posts. Own children are reaped for
their exit code; an adopted process (not our child) dies without one.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from supervisor import paths
from supervisor.core.events import ContainerAction, ContainerEvent, Event
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import ContainerSpec
from supervisor.errors import ImageMismatch, RuntimeOperationError
from supervisor.artifacts.hashing import CHUNK
from supervisor.runtime import DEFAULT_INSTANCE, clean_log, container_name, process_rss
from supervisor.runtime.cgroup import Cgroups
from supervisor.runtime.process_spec import host_argv, parse_user, process_env, rlimits

log = structlog.get_logger("supervisor.runtime.process")

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 3
KILL_WAIT_S = 10.0
EXEC_WAIT_S = 30.0

_LAUNCHER = r"""
import json, os, resource, sys
p = json.loads(sys.argv[1])
w = p["status_fd"]
try:
    os.set_inheritable(w, False)
    if p["cgroup_procs"]:
        with open(p["cgroup_procs"], "w") as f:
            f.write(str(os.getpid()))
    for name, soft, hard in p["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if p["uid"] is not None:
        os.setgroups([])
        os.setgid(p["gid"])
        os.setuid(p["uid"])
    os.chdir(p["workdir"])
    os.umask(0o077)
    os.execve(p["binary_fd"], p["argv"], p["env"])
except BaseException as e:
    os.write(w, ("%s: %s" % (type(e).__name__, e)).encode())
    os._exit(127)
"""


@dataclass
class ProcessRecord:
    """Everything to relaunch the process and to prove a live pid is it (one JSON file)."""

    id: str
    model: str
    config_hash: str
    instance: str
    image_id: str                        # binary-sha256:<hex>
    binary: str
    binary_sha256: str
    argv: list[str]
    env: dict[str, str]
    uid: int | None
    gid: int | None
    rlimits: list[tuple[str, int, int]]
    memory_bytes: int | None
    pids_limit: int
    workdir: str
    log: str
    created_at: str
    status: str = "created"              # created | running | exited
    pid: int | None = None
    start_time: int | None = None        # clock ticks after boot, /proc/<pid>/stat field 22
    started_at: str = ""
    exit_code: int | None = None
    port: int = 0                        # where it listens (picked at create when the spec says 0)

    @classmethod
    def from_json(cls, d: dict[str, object]) -> ProcessRecord:
        d = dict(d)
        d["rlimits"] = [tuple(r) for r in d.get("rlimits") or []]  # type: ignore[attr-defined]
        return cls(**d)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ProcInfo:
    state: str            # R, S, D, T, t, Z, X ...
    start_time: int


def proc_info(pid: int) -> ProcInfo | None:
    """State and start time of a pid from /proc, None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()      # after "pid (comm) "; comm may hold spaces
    return ProcInfo(state=rest[0], start_time=int(rest[19]))


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def proof(rec: ProcessRecord) -> str | None:
    """None when the record's pid is the very process it launched; else why not (pid reuse, gone)."""
    if rec.pid is None or rec.start_time is None:
        return "never started"
    info = proc_info(rec.pid)
    if info is None:
        return "no such process"
    if info.state in ("Z", "X"):
        return "exited (zombie)"
    if info.start_time != rec.start_time:
        return f"pid {rec.pid} was reused (start time {info.start_time}, recorded {rec.start_time})"
    if proc_cmdline(rec.pid) != rec.argv:
        return f"pid {rec.pid} runs another command line"
    return None


def unreachable_by(path: Path, uid: int, gid: int, *, need: int) -> str | None:
    """Why `uid`/`gid` cannot open `path` for `need` (4 read, 1 execute), judged from the mode bits; None if it can."""
    def allowed(st: os.stat_result, bits: int) -> bool:
        if st.st_uid == uid:
            return bool(st.st_mode & (bits << 6))
        if st.st_gid == gid:
            return bool(st.st_mode & (bits << 3))
        return bool(st.st_mode & bits)

    try:
        for parent in reversed(path.parents):
            st = os.stat(parent)
            if not allowed(st, 1):
                return f"directory {parent} is {oct(st.st_mode & 0o777)}, owner {st.st_uid}"
        st = os.stat(path)
    except OSError as e:
        return str(e)
    if not allowed(st, need):
        return f"{path} is {oct(st.st_mode & 0o777)}, owner {st.st_uid}"
    return None


def _exit_code(returncode: int) -> int:
    """Popen's -N for a signal as the engine reports it: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _free_port(host: str) -> int:
    """A port the kernel has free on host now (the engine's pick, done by hand for a process)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _now() -> str:
    return datetime.now(UTC).isoformat()


class DeathWatch:
    """One thread, one selector over pidfds: a process's exit is seen when it happens, not polled."""

    def __init__(self, on_exit: Callable[[str, int, int], None]) -> None:
        self._on_exit = on_exit                      # (record id, pid, pidfd)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: list[tuple[int, str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pidfd-watch", daemon=True)
        self._thread.start()

    def watch(self, rid: str, pid: int, pidfd: int) -> None:
        with self._lock:
            self._pending.append((pidfd, rid, pid))
        os.write(self._wake_w, b"x")

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        if not self._thread.is_alive():
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select():
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    with self._lock:
                        pending, self._pending = self._pending, []
                    for fd, rid, pid in pending:
                        self._sel.register(fd, selectors.EVENT_READ, (rid, pid))
                    continue
                rid, pid = key.data
                self._sel.unregister(key.fd)
                try:
                    self._on_exit(rid, pid, key.fd)
                except Exception as e:  # a failed record update must not stop the watch of the others
                    log.error("exit handling failed", id=rid[:12], pid=pid, error=str(e))
                finally:
                    os.close(key.fd)


class ProcessRuntime:
    """Runtime (supervisor.runtime) for llama-server as host processes; `kind` is "process"."""

    kind = "process"

    def __init__(self, *, post: Callable[[Event], None] | None = None, instance: str = DEFAULT_INSTANCE,
                 state_dir: Path | None = None, lock_path: Path | None = None, cgroups: Cgroups | None = None,
                 log_max_bytes: int = LOG_MAX_BYTES) -> None:
        self.instance = instance
        self.lock_path = lock_path or paths.lock_path()
        self.root = (state_dir or paths.state_dir()) / "processes" / instance
        self.records_dir = self.root / "records"
        self.logs_dir = self.root / "logs"
        self.work_dir = self.root / "work"
        for d in (self.records_dir, self.logs_dir, self.work_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700 if d != self.work_dir else 0o711)
        self.cgroups = cgroups if cgroups is not None else Cgroups(instance)
        self.log_max_bytes = log_max_bytes
        self.calls: Counter[str] = Counter()
        self._post = post or (lambda ev: None)
        self._lock = threading.RLock()
        self._records: dict[str, ProcessRecord] = self._load()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._pidfds: dict[str, int] = {}            # record id -> the watched pidfd (closed by the watch)
        self._watch = DeathWatch(self._exited)
        self.confinement = self._describe()

    # --- what is enforced -------------------------------------------------------------------

    def _describe(self) -> dict[str, str]:
        root = os.geteuid() == 0
        return {
            "listen": "spec.host_ip (127.0.0.1 unless the manifest says otherwise)",
            "user": "uid/gid of the spec (65532:65532)" if root else f"the daemon's own uid {os.geteuid()} "
                    "(not root: cannot drop to another user)",
            "session": "own session (setsid), private 0700 working directory, empty environment",
            "rlimits": "RLIMIT_CORE=0, RLIMIT_NOFILE, RLIMIT_NPROC (uid-wide ceiling)",
            "memory": "cgroup v2 memory.max" if self.cgroups.available
                      else f"RLIMIT_AS only (virtual memory, no cgroup: {self.cgroups.reason})",
            "pids": "cgroup v2 pids.max" if self.cgroups.available else "not per model (no cgroup)",
            "not enforced": "read-only root, dropped capabilities, no-new-privileges, network and mount "
                            "namespaces, cpu limits: only containers give these",
        }

    # --- records ------------------------------------------------------------------------------

    def _load(self) -> dict[str, ProcessRecord]:
        out: dict[str, ProcessRecord] = {}
        for f in sorted(self.records_dir.glob("*.json")):
            try:
                rec = ProcessRecord.from_json(json.loads(f.read_text()))
            except (ValueError, TypeError, OSError) as e:
                log.warning("unreadable process record ignored", file=str(f), error=str(e))
                continue
            if rec.instance == self.instance:
                out[rec.id] = rec
        return out

    def _save(self, rec: ProcessRecord) -> None:
        path = self.records_dir / f"{rec.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(rec), sort_keys=True))
        os.replace(tmp, path)

    def _observed(self, rec: ProcessRecord) -> ObservedContainer:
        if rec.status == "running":
            why = proof(rec)
            child = self._children.get(rec.pid) if rec.pid is not None else None
            if why is not None and child is not None and child.poll() is not None:
                rec.status, rec.exit_code = "exited", _exit_code(child.returncode)   # our child: reap it now
                self._save(rec)
            elif why is not None:
                if "reused" in why or "another command" in why:
                    log.warning("process record does not prove its pid; not adopted, never signalled",
                                model=rec.model, pid=rec.pid, reason=why)
                rec.status, rec.exit_code = "exited", None
                self._save(rec)
            elif rec.id not in self._pidfds:
                self._adopt(rec)
        status = "running" if rec.status == "running" else rec.status
        return ObservedContainer(
            id=rec.id, name=container_name(rec.model, rec.instance), model=rec.model, config_hash=rec.config_hash,
            status=status,  # type: ignore[arg-type]
            exit_code=rec.exit_code if status == "exited" else None, started_at=rec.started_at,
            image_id=rec.image_id, host_port=rec.port or None,
        )

    def _adopt(self, rec: ProcessRecord) -> None:
        """Watch a proven process this runtime did not start (a daemon restart): pidfd, then prove again."""
        assert rec.pid is not None
        try:
            fd = os.pidfd_open(rec.pid)
        except OSError:
            rec.status, rec.exit_code = "exited", None
            self._save(rec)
            return
        if proof(rec) is not None:        # the pid changed hands between the proof and the pidfd
            os.close(fd)
            rec.status, rec.exit_code = "exited", None
            self._save(rec)
            return
        self._pidfds[rec.id] = fd
        self._watch.watch(rec.id, rec.pid, fd)
        log.info("process watched", model=rec.model, pid=rec.pid, id=rec.id[:12])

    def _signal_fd(self, rec: ProcessRecord) -> int | None:
        """A pidfd (a dup, the caller closes it) for a process proven ours; None when it is not running."""
        if rec.status != "running":
            return None
        self._observed(rec)           # proves it again, adopts it if needed
        fd = self._pidfds.get(rec.id)
        if rec.status != "running" or fd is None:
            return None
        return os.dup(fd)

    def _exited(self, rid: str, pid: int, pidfd: int) -> None:
        """On the watch thread: the pidfd of `pid` became readable."""
        t_ns = time.time_ns()
        with self._lock:
            child = self._children.pop(pid, None)
            code = _exit_code(child.wait()) if child is not None else None
            rec = self._records.get(rid)
            if self._pidfds.get(rid) == pidfd:
                del self._pidfds[rid]
            if rec is None or rec.pid != pid:
                return                          # relaunched or removed since: nothing to report
            rec.status, rec.exit_code = "exited", code
            self._save(rec)
            self.cgroups.remove(rid)
            model = rec.model
        log.info("process exited", model=model, pid=pid, exit_code=code)
        self._post(ContainerEvent(ContainerAction.DIE, rid, model, exit_code=code, time_ns=t_ns))

    # --- the Runtime protocol -------------------------------------------------------------------

    def list_managed(self) -> list[ObservedContainer]:
        self.calls["list"] += 1
        with self._lock:
            out = [self._observed(r) for r in list(self._records.values())]
        self._rotate_running()
        return out

    def inspect(self, container_id: str) -> ObservedContainer | None:
        self.calls["inspect"] += 1
        with self._lock:
            rec = self._records.get(container_id)
            return self._observed(rec) if rec is not None else None

    def create(self, spec: ContainerSpec) -> str:
        self.calls["create"] += 1
        try:
            return self._create(spec)
        except OSError as e:
            raise RuntimeOperationError(f"create process record for {spec.model}: {e}") from e

    def _create(self, spec: ContainerSpec) -> str:
        from supervisor.artifacts import binaries
        from supervisor.artifacts.lock import read_lock

        rid = secrets.token_hex(32)
        binary = binaries.binary_for(read_lock(self.lock_path), spec.image_id)
        if binary is None:
            raise ImageMismatch(f"{spec.model}: no binary {spec.image_id[:27]} in the lock: run "
                                f"'llama-supervisorctl build --native VARIANT'")
        root = os.geteuid() == 0
        uid, gid = parse_user(spec.user) if root else (None, None)
        if uid is not None and gid is not None:
            for path, need in ((Path(binary.path), 5), *((Path(m.source), 4) for m in spec.mounts)):
                why = unreachable_by(path, uid, gid, need=need)
                if why is not None:
                    raise RuntimeOperationError(
                        f"{spec.model}: uid {uid} cannot {'run' if need == 5 else 'read'} {path} ({why}): "
                        f"make it and its directories readable by others (chmod o+rX), or move the state "
                        f"and cache dirs (LLAMA_SUPERVISOR_STATE_DIR, LLAMA_SUPERVISOR_CACHE_DIR)"
                    )
        port = spec.host_port or _free_port(spec.host_ip or "127.0.0.1")
        workdir = self.work_dir / rid
        workdir.mkdir(mode=0o700)
        if uid is not None:
            os.chown(workdir, uid, gid if gid is not None else uid)
        rec = ProcessRecord(
            id=rid, model=spec.model, config_hash=spec.config_hash(), instance=self.instance,
            image_id=spec.image_id, binary=binary.path, binary_sha256=binary.sha256,
            argv=list(host_argv(spec, port=port)), env=process_env(spec, str(workdir)), uid=uid, gid=gid,
            rlimits=[(r.name, r.soft, r.hard) for r in rlimits(spec, memory_by_cgroup=self.cgroups.available)],
            memory_bytes=spec.memory_bytes, pids_limit=spec.pids_limit, workdir=str(workdir),
            log=str(self.logs_dir / f"{spec.model}.log"), created_at=_now(), port=port,
        )
        with self._lock:
            self._records[rid] = rec
            self._save(rec)
        return rid

    def start(self, container_id: str) -> None:
        self.calls["start"] += 1
        with self._lock:
            rec = self._require(container_id)
            if rec.status == "running" and proof(rec) is None:
                return                           # already running, as `docker start` of a running container
            try:
                self._launch(rec)
            except OSError as e:
                raise RuntimeOperationError(f"launch {rec.model}: {e}") from e

    def _launch(self, rec: ProcessRecord) -> None:
        from supervisor.artifacts import binaries
        from supervisor.artifacts.lock import read_lock

        locked = binaries.binary_for(read_lock(self.lock_path), rec.image_id)
        if locked is None or (locked.path, locked.sha256) != (rec.binary, rec.binary_sha256):
            raise ImageMismatch(f"{rec.model}: binary {rec.binary} ({rec.image_id[:27]}) is not the one "
                                f"{self.lock_path} records: refusing to launch")
        bin_fd = os.open(rec.binary, os.O_RDONLY | os.O_CLOEXEC)
        try:
            actual = _sha256_fd(bin_fd)
            if actual != rec.binary_sha256:
                raise ImageMismatch(
                    f"llama-server binary {rec.binary} has SHA-256 {actual}, the lock has {rec.binary_sha256}: "
                    f"refusing to launch {rec.model}; rebuild with 'llama-supervisorctl build --native'"
                )
            procs = self.cgroups.prepare(rec.id, memory_bytes=rec.memory_bytes, pids_limit=rec.pids_limit)
            log_fd = self._open_log(rec)
            r, w = os.pipe()
            payload = {"status_fd": w, "binary_fd": bin_fd, "argv": rec.argv, "env": rec.env,
                       "workdir": rec.workdir, "uid": rec.uid, "gid": rec.gid,
                       "rlimits": rec.rlimits, "cgroup_procs": str(procs) if procs else None}
            try:
                child = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(payload)],
                    stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=(bin_fd, w),
                    start_new_session=True, env={}, cwd="/",
                )
            except OSError as e:
                os.close(r)
                raise RuntimeOperationError(f"launch {rec.model}: {e}") from e
            finally:
                os.close(w)
                os.close(log_fd)
        finally:
            os.close(bin_fd)
        pidfd = os.pidfd_open(child.pid)       # our unreaped child: its pid cannot be reused yet
        info = proc_info(child.pid)
        error = _read_until_exec(r, EXEC_WAIT_S)
        if error or info is None:
            os.close(pidfd)
            child.kill()
            child.wait()
            raise RuntimeOperationError(f"launch {rec.model}: {error or 'the launcher vanished'}")
        rec.pid, rec.start_time = child.pid, info.start_time
        rec.status, rec.exit_code, rec.started_at = "running", None, _now()
        self._save(rec)
        self._children[child.pid] = child
        self._pidfds[rec.id] = pidfd
        self._watch.watch(rec.id, child.pid, pidfd)
        log.info("process launched", model=rec.model, pid=child.pid, id=rec.id[:12], user=rec.uid,
                 binary_sha256=rec.binary_sha256[:12])

    def stop(self, container_id: str, *, timeout_s: float) -> None:
        self.calls["stop"] += 1
        self._signal(container_id, signal.SIGTERM, wait_s=timeout_s, then_kill=True)

    def kill(self, container_id: str) -> None:
        self.calls["kill"] += 1
        self._signal(container_id, signal.SIGKILL, wait_s=KILL_WAIT_S, then_kill=False)

    def _signal(self, rid: str, sig: signal.Signals, *, wait_s: float, then_kill: bool) -> None:
        with self._lock:
            rec = self._records.get(rid)
            fd = self._signal_fd(rec) if rec is not None else None
        if fd is None:
            return                               # not running, or not provably ours: never signalled
        try:
            signal.pidfd_send_signal(fd, sig)
            if sig == signal.SIGTERM:
                signal.pidfd_send_signal(fd, signal.SIGCONT)   # a stopped process must run to see SIGTERM
            if _wait_readable(fd, wait_s):
                return
            if then_kill:
                log.warning("graceful stop timed out; killing", id=rid[:12], timeout_s=wait_s)
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                if _wait_readable(fd, KILL_WAIT_S):
                    return
            raise RuntimeOperationError(f"process {rid[:12]} did not exit {KILL_WAIT_S:.0f}s after SIGKILL")
        except ProcessLookupError:
            return                               # exited meanwhile
        finally:
            os.close(fd)

    def unpause(self, container_id: str) -> None:
        self.calls["unpause"] += 1
        with self._lock:
            rec = self._records.get(container_id)
            fd = self._signal_fd(rec) if rec is not None else None
        if fd is not None:
            try:
                signal.pidfd_send_signal(fd, signal.SIGCONT)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)

    def remove(self, container_id: str) -> None:
        self.calls["remove"] += 1
        with self._lock:
            rec = self._records.get(container_id)
        if rec is None:
            return
        self._signal(container_id, signal.SIGKILL, wait_s=KILL_WAIT_S, then_kill=False)
        with self._lock:
            self._records.pop(container_id, None)
            (self.records_dir / f"{container_id}.json").unlink(missing_ok=True)
        shutil.rmtree(rec.workdir, ignore_errors=True)
        self.cgroups.remove(container_id)

    def memory_usage(self, container_id: str) -> int | None:
        """The process's resident set (no record or not running: None)."""
        rec = self._records.get(container_id)
        if rec is None or rec.status != "running" or rec.pid is None or proof(rec) is not None:
            return None
        return process_rss(rec.pid)

    def log_tail(self, container_id: str, *, lines: int = 20) -> str:
        self.calls["logs"] += 1
        rec = self._records.get(container_id)
        if rec is None:
            return ""
        return clean_log(_tail(Path(rec.log), lines))       # a reason for status: no escapes, lines cut short

    def logs(self, container_id: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        self.calls["logs"] += 1
        rec = self._records.get(container_id)
        if rec is None:
            raise RuntimeOperationError(f"no process {container_id[:12]}")
        path = Path(rec.log)
        yield _tail(path, lines)
        if not follow:
            return
        pause = threading.Event()
        pos = path.stat().st_size if path.exists() else 0
        while True:
            size = path.stat().st_size if path.exists() else 0
            if size < pos:
                pos = 0                          # rotated (copy-truncate): read from the start
            if size > pos:
                with path.open("rb") as f:
                    f.seek(pos)
                    chunk = f.read(size - pos)
                pos += len(chunk)
                yield chunk
                continue
            with self._lock:
                running = rec.status == "running"
            if not running:
                return                           # as `docker logs -f` ends when the container stops
            pause.wait(0.2)

    # --- logs ----------------------------------------------------------------------------------

    def _open_log(self, rec: ProcessRecord) -> int:
        path = Path(rec.log)
        if path.exists() and path.stat().st_size > self.log_max_bytes:
            _shift(path)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _rotate_running(self) -> None:
        """Copy-truncate a log past its size while its process writes (it appends: O_APPEND)."""
        for rec in list(self._records.values()):
            path = Path(rec.log)
            try:
                if path.stat().st_size <= self.log_max_bytes:
                    continue
            except OSError:
                continue
            _shift(path, copy=True)

    # --- helpers ---------------------------------------------------------------------------------

    def _require(self, rid: str) -> ProcessRecord:
        rec = self._records.get(rid)
        if rec is None:
            raise RuntimeOperationError(f"no process record {rid[:12]}: it was removed")
        return rec

    @property
    def call_count(self) -> int:
        return sum(self.calls.values())

    def pids(self) -> dict[str, int]:
        """Model -> pid of each running process (status, tests)."""
        with self._lock:
            return {r.model: r.pid for r in self._records.values() if r.status == "running" and r.pid}

    def close(self) -> None:
        """Stop watching; the processes keep running (they are adopted on the next start)."""
        self._watch.close()


def _sha256_fd(fd: int) -> str:
    import hashlib

    h = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, CHUNK, offset):
        h.update(block)
        offset += len(block)
    return h.hexdigest()


def _read_until_exec(fd: int, timeout_s: float) -> str:
    """The launcher's error message, or "" once its exec closed the pipe."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "the launcher did not exec llama-server in time"
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            block = os.read(fd, 4096)
            if not block:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(block)
    finally:
        os.close(fd)


def _wait_readable(fd: int, timeout_s: float) -> bool:
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout_s))
    return bool(ready)


def _tail(path: Path, lines: int) -> bytes:
    if lines <= 0 or not path.exists():
        return b""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block = min(size, max(8192, lines * 400))
        f.seek(size - block)
        data = f.read(block)
    return b"".join(data.splitlines(keepends=True)[-lines:])


def _shift(path: Path, *, copy: bool = False) -> None:
    """log -> log.1 -> log.2 ...; copy=True keeps the file (a writer holds it) and truncates it."""
    for i in range(LOG_KEEP - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    if copy:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        os.truncate(path, 0)
    else:
        os.replace(path, path.with_name(f"{path.name}.1"))

