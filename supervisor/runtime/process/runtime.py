"""The Runtime protocol on host processes: the verified llama-server binary, without Docker.

Each process runs in its own session (it outlives a daemon restart, as a container
does); a restarted daemon adopts it when its record's proof holds (records.py) and
the config hash matches. A pid is signalled only through a pidfd opened while that
proof holds. Launch: launcher.py; logs: logfiles.py; deaths: deathwatch.py, posted
as the same ContainerEvent(DIE) the Docker events stream posts. Own children are
reaped for their exit code; an adopted process (not our child) dies without one.
Each server it launches says when it has loaded, as the router's children do
(readiness.py), posted as ContainerEvent(READY).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import structlog

from supervisor import paths
from supervisor.artifacts.hashing import HashCache
from supervisor.artifacts.lock import LockReader
from supervisor.core.events import ContainerAction, ContainerEvent, Event
from supervisor.core.observed import ObservedContainer
from supervisor.core.spec import ContainerSpec
from supervisor.errors import ImageMismatch, RuntimeOperationError
from supervisor.runtime import DEFAULT_INSTANCE, clean_log, container_name, process_rss
from supervisor.runtime.cgroup import Cgroups
from supervisor.runtime.process.deathwatch import DeathWatch
from supervisor.runtime.process.launcher import Spares, launch
from supervisor.runtime.process.logfiles import LOG_MAX_BYTES, rotate_if_large, tail
from supervisor.runtime.process.readiness import ReadyWatch, ask_exit
from supervisor.runtime.process.records import ProcessRecord, exit_code, now, proof, unreachable_by
from supervisor.runtime.process.spec import host_argv, parse_user, process_env, rlimits

log = structlog.get_logger("supervisor.runtime.process")

KILL_WAIT_S = 10.0

def _free_port(host: str) -> int:
    """A port the kernel has free on host now (the engine's pick, done by hand for a process)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ProcessRuntime:
    """Runtime (supervisor.runtime) for llama-server as host processes; `kind` is "process"."""

    kind = "process"

    def __init__(self, *, post: Callable[[Event], None] | None = None, instance: str = DEFAULT_INSTANCE,
                 state_dir: Path | None = None, lock_path: Path | None = None, cgroups: Cgroups | None = None,
                 log_max_bytes: int = LOG_MAX_BYTES, hashes: HashCache | None = None) -> None:
        self.instance = instance
        self.lock_path = lock_path or paths.lock_path()
        self._lock_file = LockReader(self.lock_path)
        self.hashes = hashes if hashes is not None else HashCache()   # the binary, per file identity
        self.root = (state_dir or paths.state_dir()) / "processes" / instance
        self.records_dir = self.root / "records"
        self.logs_dir = self.root / "logs"
        self.work_dir = self.root / "work"
        self.stdin_dir = self.root / "stdin"          # each server's stdin FIFO (readiness.py)
        for d in (self.records_dir, self.logs_dir, self.work_dir, self.stdin_dir):
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
        self._ready = ReadyWatch(self._announced)    # each server's "ready" line (readiness.py)
        self._spares = Spares()                      # a launcher started ahead of each launch (launcher.py)
        self._spares.refill(now=True)
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
                rec.status, rec.exit_code = "exited", exit_code(child.returncode)   # our child: reap it now
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

    def _announced(self, rid: str, pid: int) -> None:
        """On the ready watch's thread: server `pid` of record `rid` said it has loaded."""
        with self._lock:
            rec = self._records.get(rid)
            model = rec.model if rec is not None and rec.status == "running" and rec.pid == pid else None
        if model is not None:
            self._post(ContainerEvent(ContainerAction.READY, rid, model, time_ns=time.time_ns()))

    def _stdin(self, rid: str) -> Path:
        return self.stdin_dir / f"{rid}.fifo"

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
            code = exit_code(child.wait()) if child is not None else None
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

    @property
    def announces_ready(self) -> bool:
        """Each server it launches says when it has loaded (readiness.py): probed then, not polled for."""
        return True

    @property
    def successors(self) -> bool:
        """One record name and one log file per model (logs/<model>.log, followed by the console across
        restarts): a second process of a model would share them. Config changes go stop-first here."""
        return False

    def list_managed(self) -> list[ObservedContainer]:
        self.calls["list"] += 1
        with self._lock:
            return [self._observed(r) for r in list(self._records.values())]

    def maintain(self) -> None:
        """Periodic upkeep the loop calls on each resync: copy-truncate logs past their size."""
        with self._lock:
            logs = [Path(r.log) for r in self._records.values()]
        for path in logs:
            rotate_if_large(path, self.log_max_bytes)

    def inspect(self, container_id: str) -> ObservedContainer | None:
        self.calls["inspect"] += 1
        with self._lock:
            rec = self._records.get(container_id)
            return self._observed(rec) if rec is not None else None

    def create(self, spec: ContainerSpec, *, beside: str = "", held: bool = False) -> str:
        """`beside` is never given (successors is False): a process runtime replaces a model stop-first.
        `held` changes nothing: a fork and exec has no engine part to do ahead (`prepare`)."""
        self.calls["create"] += 1
        try:
            return self._create(spec)
        except OSError as e:
            raise RuntimeOperationError(f"create process record for {spec.model}: {e}") from e

    def prepare(self, container_id: str) -> None:
        """Nothing to do ahead: a start is a fork and exec, with no engine between (Runtime.prepare). Its
        launcher is started by the stop that makes the swap's room (`stop`)."""

    def _create(self, spec: ContainerSpec) -> str:
        from supervisor.artifacts import binaries

        rid = secrets.token_hex(32)
        binary = binaries.binary_for(self._lock_reader().read(), spec.image_id)
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
            log=str(self.logs_dir / f"{spec.model}.log"), created_at=now(), port=port,
        )
        with self._lock:
            self._records[rid] = rec
            self._save(rec)
        return rid

    def _lock_reader(self) -> LockReader:
        """The lock, parsed again only when its file changed (or lock_path was pointed elsewhere)."""
        if self._lock_file.path != self.lock_path:
            self._lock_file = LockReader(self.lock_path)
        return self._lock_file

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
        launched = launch(rec, lock=self._lock_reader(), cgroups=self.cgroups, log_max_bytes=self.log_max_bytes,
                          stdin_path=self._stdin(rec.id), hashes=self.hashes, spares=self._spares)
        child, pidfd = launched.child, launched.pidfd
        rec.pid, rec.start_time = child.pid, launched.start_time
        rec.status, rec.exit_code, rec.started_at = "running", None, now()
        self._save(rec)
        self._children[child.pid] = child
        self._pidfds[rec.id] = pidfd
        self._watch.watch(rec.id, child.pid, pidfd)
        self._ready.watch(rec.id, child.pid, launched.state_fd)
        log.info("process launched", model=rec.model, pid=child.pid, id=rec.id[:12], user=rec.uid,
                 binary_sha256=rec.binary_sha256[:12])

    def stop(self, container_id: str, *, timeout_s: float) -> None:
        self.calls["stop"] += 1
        # a start often follows (a swap, a stop-first recreate): its launcher is started now, beside the stop,
        # not SPARE_DELAY_S after the last launch (a swap sooner than that started one on its path: 21-25 ms)
        self._spares.refill(now=True)
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
            if sig == signal.SIGTERM:
                # A server that has loaded exits once it reads this too (readiness.py): a SIGTERM alone
                # would leave it waiting for it. One still loading dies of the SIGTERM, as any process.
                ask_exit(self._stdin(rid))
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
            self._stdin(container_id).unlink(missing_ok=True)
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
        return clean_log(tail(Path(rec.log), lines))       # a reason for status: no escapes, lines cut short

    def logs(self, container_id: str, *, lines: int = 100, follow: bool = False) -> Iterator[bytes]:
        self.calls["logs"] += 1
        rec = self._records.get(container_id)
        if rec is None:
            raise RuntimeOperationError(f"no process {container_id[:12]}")
        path = Path(rec.log)
        yield tail(path, lines)
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
        self._spares.close()
        self._watch.close()
        self._ready.close()


def _wait_readable(fd: int, timeout_s: float) -> bool:
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout_s))
    return bool(ready)
