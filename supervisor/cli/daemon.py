"""llama-supervisord: wires the loop to Docker, the manifests, the control socket, systemd and metrics.

The loop runs on its own thread; the main thread only installs signal handlers
(which put a SignalReceived on the queue, nothing else) and waits for the loop
to finish. By default SIGTERM leaves the model containers running, so a daemon
upgrade or restart drops no model (they are adopted on the next start);
`--stop-models-on-exit` stops them, gracefully first. Before the loop is told, the gateway stops
accepting and lets its requests in flight finish (`--shutdown-grace`, supervisor.cli.graceful).
Under systemd socket activation the listening sockets are inherited (supervisor.cli.listeners).
"""

from __future__ import annotations

import gc
import queue
import resource
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click
import structlog

from supervisor import __version__, logs, paths
from supervisor.cli import output
from supervisor.core.events import Event, SignalReceived
from supervisor.artifacts.lock import LockView
from supervisor.core.spec import DesiredModel
from supervisor.errors import ConfigError, ManifestError, SupervisorError

log = structlog.get_logger("supervisor.daemon")


def make_loader(manifests: Path, lock_path: Path, *, isolated: bool = False, lock_view: LockView = "images",
                read_timeout_s: float | None = None, kv_off: str = "") -> Any:
    """render.load_desired, with a fresh lock per read; any problem makes the whole set invalid.

    isolated: read in a child process (supervisor.render.reader), as llama-supervisord does, so the
    daemon never loads pydantic and PyYAML and a hostile manifest cannot take it down.
    lock_view: the lock's section to render against, as the runtime's adapter names it (RuntimeAdapter.lock_view).
    read_timeout_s: the isolated reader's deadline (reader.read_timeout_s: within the systemd watchdog).
    kv_off: why this daemon keeps no KV cache ('' when it may): then no model is rendered with one.
    """
    from supervisor.artifacts import hardware

    host = hardware.detect()

    if isolated:
        import dataclasses
        import json

        from supervisor.render import reader

        host_json = json.dumps({**dataclasses.asdict(host), "cpu_flags": sorted(host.cpu_flags),
                                "emulates": sorted(host.emulates)})

        def load_isolated() -> Mapping[str, DesiredModel]:
            desired, problems = reader.read(manifests, lock_path, host_json, lock_view=lock_view,
                                            timeout_s=read_timeout_s or reader.READ_TIMEOUT_S, kv_off=kv_off)
            if problems:
                raise ManifestError(problems)
            return desired

        return load_isolated

    from supervisor.render import desired as render
    from supervisor.artifacts.lock import read_lock

    def load() -> Mapping[str, DesiredModel]:
        try:
            lock = read_lock(lock_path)
            desired, problems = render.load_desired(manifests, lock.view(lock_view), host, kv_off=kv_off)
        finally:
            _release_freed_memory()   # parsing and validation leave freed heap behind (~1 MiB of RSS)
        if problems:
            raise ManifestError(problems)
        return desired

    return load


def _release_freed_memory() -> None:
    """glibc's malloc_trim: give the pages freed by a manifest read back to the OS (rare: reloads).

    (No gc.collect(): it found nothing to free here and costs ~0.1 s in a process with many objects.)
    """
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)       # the process's own symbols: libc's, when it is glibc
    except (OSError, AttributeError):
        pass      # not glibc (musl has no malloc_trim): nothing to trim


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llama-supervisord")
@click.option("--manifests", "manifests", type=click.Path(path_type=Path), default=None,
              help="Manifest directory [default: $LLAMA_SUPERVISOR_MANIFESTS or ./manifests].")
@click.option("--lock", "lock_path", type=click.Path(path_type=Path), default=None, help="Image lock file.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=None, help="Control socket.")
@click.option("--socket-group", default=None, help="Group allowed to use the control socket.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on 127.0.0.1:PORT.")
@click.option("--resync-interval", type=float, default=30.0, show_default=True,
              help="Seconds between full lists of containers (events drive everything else).")
@click.option("--stop-timeout", type=float, default=10.0, show_default=True,
              help="Seconds a graceful stop may take before the container is killed.")
@click.option("--recreate", type=click.Choice(["start-first", "stop-first"]), default="start-first",
              show_default=True,
              help="How a manifest change replaces a model that serves. start-first: the new container starts "
                   "beside the old one and takes the route once healthy, then the old one drains and stops "
                   "(needs an engine-picked port, the docker runtime and room in the memory budget for both; "
                   "else stop-first). stop-first: the old one drains (new requests wait), stops, then the new "
                   "one starts.")
@click.option("--shutdown-grace", type=click.FloatRange(0, 3600), default=30.0, show_default=True,
              help="On SIGTERM/SIGINT the gateway stops accepting at once and waits this many seconds at most for "
                   "its requests in flight (streams included) to finish before the daemon exits (a second "
                   "signal cuts the wait). Keep it below systemd's TimeoutStopSec.")
@click.option("--stop-models-on-exit", is_flag=True,
              help="On SIGTERM/SIGINT stop the model containers (default: leave them running).")
@click.option("--instance", default="default", show_default=True, envvar="LLAMA_SUPERVISOR_INSTANCE",
              help="Name of this daemon's set of containers (label io.llama-supervisor.instance); "
                   "two daemons on one engine need different names.")
@click.option("--gateway-listen", default="127.0.0.1:8080", show_default=True, envvar="LLAMA_SUPERVISOR_GATEWAY",
              help="Serve the OpenAI-compatible gateway for every model on HOST:PORT.")
@click.option("--no-gateway", is_flag=True, help="No gateway: each model only on its own port.")
@click.option("--gateway-api-keys-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Require 'Authorization: Bearer KEY' at the gateway; one key per line (a line that starts "
                   "with # is a comment). A model with its own api_key_file takes its own key or one of these.")
@click.option("--gateway-allowed-hosts", default="", metavar="NAME,...",
              help="Host names the gateway answers besides 127.0.0.1, localhost, [::1] and the listen address "
                   "(others get 421: DNS rebinding). Listening on 0.0.0.0 or ::, name every address and name "
                   "clients use, e.g. 192.168.1.5,gpu-box.lan.")
@click.option("--admin-keys-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Keys that may act through the web console (/ui/) as 'Authorization: Bearer KEY', for programs;"
                   " one per line. The gateway's inference keys never may.")
@click.option("--gateway-max-body", default="16m", show_default=True, help="Largest request body the gateway takes.")
@click.option("--gateway-body-budget", default="64m", show_default=True,
              help="Bytes that request bodies over 64 KiB may hold together while their requests are in flight; "
                   "more get 503 + Retry-After.")
@click.option("--gateway-max-uploads", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Request bodies over 64 KiB the gateway receives at once (one more waits up to 1 s, then 503).")
@click.option("--gateway-max-connections", type=click.IntRange(1, 1 << 20), default=1024, show_default=True,
              help="Open gateway connections; at most a quarter of the fd soft limit. At the cap a new one "
                   "evicts the oldest idle or half-sent one.")
@click.option("--memory-budget", default="auto", show_default=True,
              help="RAM the models may count together (e.g. 12g); auto: 90%% of this host's, none: no budget.")
@click.option("--gpu-memory-budget", default="auto", show_default=True,
              help="GPU memory GPU-profile models may count together; auto: 90%% of the GPUs', none: no budget.")
@click.option("--swap-policy", type=click.Choice(["batch", "fifo"]), default="batch", show_default=True,
              help="When on-demand models wait for room: batch serves the loaded model's queue first and swaps "
                   "when it is empty or another model's oldest request has waited --max-swap-wait; fifo swaps in "
                   "strict arrival order (a swap on every alternation).")
@click.option("--max-swap-wait", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="Seconds (batch) a request may wait for busy models to make room before they must.")
@click.option("--no-watch", "no_watch", is_flag=True,
              help="Do not apply manifest changes as they land: only 'llama-supervisorctl update' (or reload, "
                   "SIGHUP) does, after 'reread' shows them (supervisord's way).")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto", show_default=True)
@click.option("--kv-cache-max", default="8g", show_default=True, envvar="LLAMA_SUPERVISOR_KV_CACHE_MAX",
              help="Disk all models' kept KV caches may take together (least recently used files go first); "
                   "none: keep no KV cache. Each model's own bound is kv_cache.max_size.")
@click.option("--standby/--no-standby", default=True, show_default=True, envvar="LLAMA_SUPERVISOR_STANDBY",
              help="Docker: keep a stopped on-demand model's container started and held before llama-server's "
                   "exec (images/gate.c), so that its next start skips the engine's `docker start` (0.2-0.4 s on "
                   "a 2-core host). Costs a small process, the engine's shim and the port's proxy per such "
                   "model (docs/DESIGN.md, 'Standby containers'); `docker ps` shows it Up.")
@click.option("--standby-max", type=click.IntRange(min=0), default=4, show_default=True,
              envvar="LLAMA_SUPERVISOR_STANDBY_MAX",
              help="Docker: at most this many stopped models held ready at once, the last stopped kept.")
@click.option("--runtime", "runtime_kind", type=click.Choice(["docker", "process", "auto"]), default="docker",
              show_default=True, envvar="LLAMA_SUPERVISOR_RUNTIME",
              help="Run models as Docker containers, as host processes (the lock's native binary), or "
                   "auto: Docker when the engine answers, else processes.")
def cli(manifests: Path | None, lock_path: Path | None, socket_path: Path | None, socket_group: str | None,
        metrics_port: int | None, resync_interval: float, stop_timeout: float, recreate: str, shutdown_grace: float,
        stop_models_on_exit: bool, instance: str, gateway_listen: str, no_gateway: bool, gateway_api_keys_file: Path | None,
        gateway_allowed_hosts: str, admin_keys_file: Path | None, gateway_max_body: str, gateway_body_budget: str,
        gateway_max_uploads: int,
        gateway_max_connections: int, memory_budget: str, gpu_memory_budget: str, swap_policy: str,
        max_swap_wait: float, no_watch: bool, log_format: logs.LogFormat, runtime_kind: str, kv_cache_max: str, standby: bool,
        standby_max: int) -> None:
    """Keep the llama-server models the manifests describe alive, and serve them on one endpoint."""
    logs.setup(log_format)
    from supervisor.cli.listeners import inherit

    # First: LISTEN_* leave the environment before anything could start a child that would read them.
    listeners = inherit(gateway_listen=None if no_gateway else gateway_listen)
    if listeners.any:
        log.info("socket activation: inherited listening sockets", gateway=listeners.gateway is not None,
                 control=listeners.control is not None)
    soft, hard = raise_nofile_limit()
    log.info("open file limit", soft=soft, hard=hard)
    gateway = None if no_gateway else GatewayOptions(
        listen=gateway_listen, api_keys_file=gateway_api_keys_file, max_body=_size(gateway_max_body, "--gateway-max-body"),
        allowed_hosts=tuple(h.strip() for h in gateway_allowed_hosts.split(",") if h.strip()),
        body_budget=_size(gateway_body_budget, "--gateway-body-budget"), max_uploads=gateway_max_uploads,
        max_connections=gateway_max_connections, admin_keys_file=admin_keys_file, socket_group=socket_group,
        instance=instance, shutdown_grace_s=shutdown_grace)
    if gateway is not None and gateway.body_budget < gateway.max_body:
        raise ConfigError(f"--gateway-body-budget {gateway_body_budget} is less than --gateway-max-body"
                          f" {gateway_max_body} (fix: a budget of at least one largest body)")
    run(
        manifests=manifests or paths.manifests_dir(),
        lock_path=lock_path or paths.lock_path(),
        socket_path=socket_path or paths.socket_path(),
        socket_group=socket_group,
        metrics_port=metrics_port,
        resync_interval=resync_interval,
        stop_timeout=stop_timeout,
        recreate=recreate,
        stop_models_on_exit=stop_models_on_exit,
        instance=instance,
        gateway=gateway,
        budgets=(memory_budget, gpu_memory_budget),
        runtime_kind=runtime_kind,
        standby=standby_max if standby else 0,
        watch=not no_watch,
        kv_cache_max=None if kv_cache_max.strip().lower() == "none" else _size(kv_cache_max, "--kv-cache-max"),
        listeners=listeners,
        swap=(swap_policy, max_swap_wait),
    )


NOFILE_CEILING = 1 << 20     # when the hard limit is unlimited (the kernel's nr_open default)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) afterwards.

    systemd's default soft limit is 1024 (select()'s old ceiling): 1,100 half-open
    connections held every descriptor, and with them the probes, the Docker calls and
    /health. The daemon never uses select(), so it takes what the hard limit allows
    (the unit sets LimitNOFILE too).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, NOFILE_CEILING)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as e:
        log.warning("cannot raise the open file limit", soft=soft, hard=hard, error=str(e))
        return soft, hard
    return want, hard


@dataclass(frozen=True)
class GatewayOptions:
    listen: str = "127.0.0.1:8080"
    api_keys_file: Path | None = None
    max_body: int = 16 * 1024 * 1024
    allowed_hosts: tuple[str, ...] = ()
    body_budget: int = 64 * 1024 * 1024
    max_uploads: int = 16
    max_connections: int = 1024
    admin_keys_file: Path | None = None      # the console's admin keys
    socket_group: str | None = None          # the console's token file is readable as the socket is usable
    instance: str = "default"
    shutdown_grace_s: float = 30.0


def _size(value: str, option: str) -> int:
    from supervisor.core.sizes import parse_memory

    try:
        size = parse_memory(value)
    except ValueError as e:
        raise ConfigError(f"{option} {value!r}: {e}") from None
    assert isinstance(size, int)
    return size


def kv_wiring(total_bytes: int | None, runtime_kind: str) -> dict[str, Any]:
    """The Supervisor's KV cache store (kvstore.py) and why it keeps none, if it keeps none. The same reason
    goes to render (make_loader's kv_off): a model of a daemon that keeps no cache mounts no cache directory,
    since no one would prepare it (a bind mount's missing source fails the create; a directory the server's
    uid cannot reach fails a process's)."""
    import os

    from supervisor.daemon.kvkeeper import owner_for
    from supervisor.daemon.kvstore import KvStore

    if total_bytes is None:
        return {"kv_off_reason": "off: --kv-cache-max none"}
    owner = owner_for("65532:65532")
    store = KvStore(paths.kv_dir(), total_bytes=total_bytes, owner=owner)
    off = ""
    if runtime_kind == "docker" and os.geteuid() != 0:
        off = (f"off: the daemon runs as uid {os.geteuid()}, not root, so it cannot give the containers' uid"
               f" 65532 a cache directory of its own (the process runtime can)")
    elif runtime_kind == "process" and owner is not None:
        off = _kv_unreachable(paths.kv_dir(), *owner)
    if off:
        log.warning("kv cache: not kept", reason=off)
    return {"kv_store": store, "kv_off_reason": off}


def _kv_unreachable(kv_dir: Path, uid: int, gid: int) -> str:
    """Why a process running as uid:gid could not reach the KV directory ('' when it can): the daemon makes
    the directories from the KV dir down itself, so the nearest one that exists already is judged."""
    from supervisor.runtime.process.records import unreachable_by

    there = next((d for d in (kv_dir, *kv_dir.parents) if d.is_dir()), Path("/"))
    why = unreachable_by(there, uid, gid, need=1)
    if why is None:
        return ""
    return (f"off: uid {uid} (the servers' under the process runtime) cannot reach {kv_dir} ({why}); fix: "
            f"chmod o+x the directories above it, or set LLAMA_SUPERVISOR_KV_DIR to a directory it can reach")


def make_budget(memory: str, gpu_memory: str, host: Any) -> Any:
    """auto: 90% of what the host has (RAM; the GPUs' memory, none without GPUs); none: no budget."""
    from supervisor.core.scheduler import Budget

    def one(value: str, option: str, total: int) -> int | None:
        if value == "none":
            return None
        if value == "auto":
            return int(total * 0.9) if total else None
        return _size(value, option)

    return Budget(one(memory, "--memory-budget", host.memory_bytes),
                  one(gpu_memory, "--gpu-memory-budget", sum(g.vram_bytes for g in host.gpus)))


def run(*, manifests: Path, lock_path: Path, socket_path: Path, socket_group: str | None,
        metrics_port: int | None, resync_interval: float, stop_timeout: float,
        stop_models_on_exit: bool, instance: str = "default", gateway: GatewayOptions | None = None,
        budgets: tuple[str, str] = ("auto", "auto"), runtime_kind: str = "docker", watch: bool = True,
        kv_cache_max: int | None = 8 * 1024**3, listeners: Any = None,
        swap: tuple[str, float] = ("batch", 10.0), recreate: str = "start-first", standby: int = 0) -> None:
    """listeners: the sockets inherited under socket activation (supervisor.cli.listeners.Listeners), or None."""
    from supervisor.cli.graceful import GracefulStop
    from supervisor.artifacts import hardware
    from supervisor.core.events import Tick
    from supervisor.daemon.controller import DaemonController
    from supervisor.core.demand import Demand
    from supervisor.core.scheduler import SwapPolicy, SwapSettings
    from supervisor.daemon.loop import LoopSettings, Supervisor
    from supervisor.daemon.state import RecreateMode
    from supervisor.render.reader import read_timeout_s
    from supervisor.daemon.statefile import StateFile
    from supervisor.daemon.watcher import ManifestWatcher
    from supervisor.gateway.keys import read_gateway_keys
    from supervisor.daemon.health import Prober
    from supervisor.runtime import check_instance
    from supervisor.runtime.choose import choose

    check_instance(instance)
    if not manifests.is_dir():
        raise ManifestError([f"{manifests}: not a directory; create it or pass --manifests DIR"])

    events: queue.Queue[Event] = queue.Queue()
    host = hardware.detect()
    budget = make_budget(*budgets, host)
    api_keys = read_gateway_keys(gateway.api_keys_file) if gateway and gateway.api_keys_file else frozenset()
    wiring = choose(runtime_kind, instance=instance, lock_path=lock_path, post=events.put,  # type: ignore[arg-type]
                    standby=standby)
    runtime = wiring.runtime
    log.info("runtime", runtime=wiring.kind, why=wiring.why, **({"confinement": wiring.confinement}
                                                                 if wiring.confinement else {}))
    closers: list[Any] = []
    notifier, metrics, max_wait, watchdog_s = _systemd_and_metrics(metrics_port, closers)
    kv = kv_wiring(kv_cache_max, wiring.kind)
    sup = Supervisor(
        events=events,
        runtime=runtime,
        verifier=wiring.verifier,
        load_desired=make_loader(manifests, lock_path, isolated=True, lock_view=wiring.lock_view,
                                 read_timeout_s=read_timeout_s(watchdog_s), kv_off=kv["kv_off_reason"]),
        prober=(prober := Prober(events.put)),
        notifier=notifier,
        metrics=metrics,
        settings=LoopSettings(resync_interval_s=resync_interval, stop_timeout_s=stop_timeout,
                              stop_models_on_exit=stop_models_on_exit, max_wait_s=max_wait,
                              recreate=RecreateMode(recreate)),
        demand=Demand(time.monotonic, wake=lambda: events.put(Tick())),
        budget=budget,
        swap=SwapSettings(SwapPolicy(swap[0]), swap[1]),
        state=StateFile(paths.state_dir() / f"models.{instance}.state.json"),
        **kv,
    )
    if sup.kv is not None:
        prober.on_healthy = sup.kv.restore
        closers.append(sup.kv)
    log.info("memory budgets", memory_mib=budget.memory_bytes and budget.memory_bytes >> 20,
             gpu_memory_mib=budget.gpu_memory_bytes and budget.gpu_memory_bytes >> 20)
    closers.append(prober)
    stream = wiring.events
    watcher = ManifestWatcher(manifests, events.put) if watch else None

    graceful = GracefulStop(lambda signum: events.put(SignalReceived(signum)))

    def record(signum: int, frame: FrameType | None) -> None:
        graceful.on_signal(signum)    # only record: the main thread drains the gateway, the loop thread decides

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, record)

    try:
        if stream is not None:
            stream.start()
            stream.connected.wait(5)  # so no die event is missed between the first list and the stream
        if watcher is not None:
            watcher.start()
        else:
            log.info("not watching manifests; apply changes with 'llama-supervisorctl update'",
                     directory=str(manifests))
        closers[:0] = [c for c in (watcher, stream) if c is not None]
        controller = DaemonController(sup)
        server = _control_server(controller, socket_path, socket_group,
                                 paths.Locations.current(lock=lock_path, manifests=manifests),
                                 inherited=listeners.control if listeners is not None else None)
        if server is not None:
            closers.insert(0, server)
        if gateway is not None:
            made = _gateway(controller, gateway, api_keys, metrics, console_host=(host, budget, lock_path),
                            sock=listeners.gateway if listeners is not None else None)
            closers[:0] = made
            graceful.gateway = made[0]
        # Everything made so far (modules, classes, the wiring) lives as long as the process: out of
        # the collector's sight, a full collection walks only what came later, so a flood of
        # short-lived connections cannot make one pause every thread (gateway included) for long.
        gc.freeze()
        loop = threading.Thread(target=sup.run, name="loop")
        loop.start()
        while loop.is_alive():
            loop.join(0.5)
            graceful.step()
        if not sup.done.is_set():
            # The loop thread died of a bug (its traceback is above): exit non-zero so that
            # systemd's Restart=on-failure starts a new daemon, which adopts the containers.
            raise SupervisorError("the loop thread died unexpectedly (see the traceback above)")
    finally:
        for c in closers:
            try:
                c.close()
            except Exception as e:  # best effort at exit: report and go on closing the rest
                log.warning("close failed", what=type(c).__name__, error=str(e))
        wiring.close()
        log.info("exited", runtime=wiring.kind, runtime_calls=runtime.call_count)


def _systemd_and_metrics(metrics_port: int | None, closers: list[Any]) -> tuple[Any, Any, float, float | None]:
    from supervisor.control.api import NullMetrics, NullNotifier

    notifier: Any = NullNotifier()
    max_wait = 5.0
    interval: float | None = None
    try:
        from supervisor.daemon import sdnotify

        notifier = sdnotify.SdNotifier.from_env()
        interval = sdnotify.watchdog_interval_s()
        if interval is not None:
            max_wait = min(max_wait, interval)
        if hasattr(notifier, "close"):
            closers.append(notifier)
    except ModuleNotFoundError:
        log.warning("supervisor.daemon.sdnotify missing: no systemd notifications")
    metrics: Any = NullMetrics()
    if metrics_port is not None:
        from supervisor.metrics import PrometheusMetrics

        pm = PrometheusMetrics()
        pm.serve(metrics_port)
        closers.append(pm)
        metrics = pm
        log.info("metrics", url=f"http://127.0.0.1:{metrics_port}/metrics")
    return notifier, metrics, max_wait, interval


def _gateway(controller: Any, options: GatewayOptions, api_keys: frozenset[str], metrics: Any,
             console_host: tuple[Any, Any, Path], sock: Any = None) -> list[Any]:
    """[the gateway's server, the console]: the server first (the graceful stop drains it)."""
    from supervisor.core.activity import Activity
    from supervisor.gateway.app import GatewaySettings, create_app
    from supervisor.gateway.body import BodyLimits
    from supervisor.gateway.connections import ConnectionLimits
    from supervisor.gateway.guard import LOOPBACK_NAMES, allowed_hosts
    from supervisor.gateway.server import GatewayServer, parse_listen

    hosts = allowed_hosts(parse_listen(options.listen)[0], options.allowed_hosts)
    if hosts == LOOPBACK_NAMES and parse_listen(options.listen)[0] not in LOOPBACK_NAMES:
        log.warning("the gateway listens on every address but answers only 127.0.0.1, localhost and [::1]:"
                    " name the others with --gateway-allowed-hosts", listen=options.listen)
    body = BodyLimits(budget_bytes=options.body_budget, max_uploads=options.max_uploads)
    settings = GatewaySettings(max_body_bytes=options.max_body, api_keys=api_keys, allowed_hosts=hosts, body=body)
    activity = Activity()
    console, mount, token = _console(controller, options, activity, public_read=not api_keys, host=console_host)
    app = create_app(controller, settings, metrics, activity=activity, mounts=[mount])
    server = GatewayServer(app, options.listen, ConnectionLimits(max_connections=options.max_connections),
                           sock=sock, grace_s=options.shutdown_grace_s)
    shown = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    base = f"http://{'[' + shown + ']' if ':' in shown else shown}:{server.port}/ui/"
    controller.console_login = lambda: f"{base}login?token={token}"
    server.before_drain.append(console.end_streams)   # pages stream forever: they must not hold the drain
    server.start()
    console.start()
    log.info("console", url=base)
    return [server, console]


def _console(controller: Any, options: GatewayOptions, activity: Any, *, public_read: bool,
             host: tuple[Any, Any, Path]) -> tuple[Any, Any, str]:
    """The web console (/ui/, supervisor.console): its login token written where the control socket's users
    can read it, the URL with it handed to `llama-supervisorctl console` through the control socket."""
    from starlette.routing import Mount

    from supervisor.console.app import Console, ConsoleSettings, HostFacts
    from supervisor.console.auth import Authority, new_token, token_path, write_token
    from supervisor.console.views import Budgets
    from supervisor.gateway.keys import read_gateway_keys

    info, budget, lock_path = host
    admin_keys = (read_gateway_keys(options.admin_keys_file, "--admin-keys-file") if options.admin_keys_file
                  else frozenset())
    token = new_token()
    where = token_path(paths.state_dir(), options.instance)
    write_token(where, token, options.socket_group)
    facts = HostFacts(cores=info.cores, memory_bytes=info.memory_bytes, arch=info.arch,
                      gpus=tuple((g.name, g.vram_bytes) for g in info.gpus),
                      budgets=Budgets(budget.memory_bytes, budget.gpu_memory_bytes), lock_path=lock_path)
    console = Console(controller, activity, Authority(token, admin_keys), facts, ConsoleSettings(public_read=public_read))
    log.info("console login token written", token_file=str(where))
    return console, Mount("/ui", app=console.app), token


def _control_server(controller: Any, path: Path, group: str | None, locations: paths.Locations,
                    inherited: Any = None) -> Any:
    try:
        from supervisor.control.server import ControlServer
    except ModuleNotFoundError:
        log.warning("supervisor.control.server missing: no control socket")
        return None
    server = ControlServer(controller, path, group=group, locations=locations, inherited=inherited)
    server.start()
    return server


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="llama-supervisord", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    except SupervisorError as e:
        log.error("llama-supervisord cannot run", error=str(e))
        output.echo(f"llama-supervisord: {e}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
