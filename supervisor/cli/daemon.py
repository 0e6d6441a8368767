"""llama-supervisord: wires the loop to Docker, the manifests, the control socket, systemd and metrics.

The loop runs on its own thread; the main thread only installs signal handlers
(which put a SignalReceived on the queue, nothing else) and waits for the loop
to finish. By default SIGTERM leaves the model containers running, so a daemon
upgrade or restart drops no model (they are adopted on the next start);
`--stop-models-on-exit` stops them, gracefully first.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import click
import structlog

from supervisor import __version__, logs, paths
from supervisor.core.events import Event, SignalReceived
from supervisor.core.spec import DesiredModel
from supervisor.errors import ManifestError, SupervisorError

log = structlog.get_logger("supervisor.daemon")


def make_loader(manifests: Path, lock_path: Path, *, isolated: bool = False) -> Any:
    """render.load_desired, with a fresh lock per read; any problem makes the whole set invalid.

    isolated: read in a child process (supervisor.daemon.reader), as llama-supervisord does, so the
    daemon never loads pydantic and PyYAML and a hostile manifest cannot take it down.
    """
    from supervisor import hardware

    host = hardware.detect()

    if isolated:
        import dataclasses
        import json

        from supervisor.daemon import reader

        host_json = json.dumps({**dataclasses.asdict(host), "cpu_flags": sorted(host.cpu_flags)})

        def load_isolated() -> Mapping[str, DesiredModel]:
            desired, problems = reader.read(manifests, lock_path, host_json)
            if problems:
                raise ManifestError(problems)
            return desired

        return load_isolated

    from supervisor import render
    from supervisor.lock import read_lock

    def load() -> Mapping[str, DesiredModel]:
        try:
            desired, problems = render.load_desired(manifests, read_lock(lock_path), host)
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
@click.option("--stop-models-on-exit", is_flag=True,
              help="On SIGTERM/SIGINT stop the model containers (default: leave them running).")
@click.option("--instance", default="default", show_default=True, envvar="LLAMA_SUPERVISOR_INSTANCE",
              help="Name of this daemon's set of containers (label io.llama-supervisor.instance); "
                   "two daemons on one engine need different names.")
@click.option("--no-watch", "no_watch", is_flag=True,
              help="Do not apply manifest changes as they land: only 'llama-supervisorctl update' (or reload, "
                   "SIGHUP) does, after 'reread' shows them (supervisord's way).")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto", show_default=True)
def cli(manifests: Path | None, lock_path: Path | None, socket_path: Path | None, socket_group: str | None,
        metrics_port: int | None, resync_interval: float, stop_timeout: float, stop_models_on_exit: bool,
        instance: str, no_watch: bool, log_format: logs.LogFormat) -> None:
    """Keep the llama-server containers the manifests describe alive."""
    logs.setup(log_format)
    run(
        manifests=manifests or paths.manifests_dir(),
        lock_path=lock_path or paths.lock_path(),
        socket_path=socket_path or paths.socket_path(),
        socket_group=socket_group,
        metrics_port=metrics_port,
        resync_interval=resync_interval,
        stop_timeout=stop_timeout,
        stop_models_on_exit=stop_models_on_exit,
        instance=instance,
        watch=not no_watch,
    )


def run(*, manifests: Path, lock_path: Path, socket_path: Path, socket_group: str | None,
        metrics_port: int | None, resync_interval: float, stop_timeout: float,
        stop_models_on_exit: bool, instance: str = "default", watch: bool = True) -> None:
    import docker

    from supervisor.daemon.controller import DaemonController
    from supervisor.daemon.executor import LockVerifier
    from supervisor.daemon.loop import LoopSettings, Supervisor
    from supervisor.daemon.statefile import StateFile
    from supervisor.daemon.watcher import ManifestWatcher
    from supervisor.health import Prober
    from supervisor.runtime.docker import DockerRuntime
    from supervisor.runtime.events import DockerEventStream

    if not manifests.is_dir():
        raise ManifestError([f"{manifests}: not a directory; create it or pass --manifests DIR"])

    events: queue.Queue[Event] = queue.Queue()
    runtime = DockerRuntime(instance=instance)
    closers: list[Any] = []
    notifier, metrics, max_wait = _systemd_and_metrics(metrics_port, closers)
    sup = Supervisor(
        events=events,
        runtime=runtime,
        verifier=LockVerifier(runtime.client, lock_path),
        load_desired=make_loader(manifests, lock_path, isolated=True),
        prober=(prober := Prober(events.put)),
        notifier=notifier,
        metrics=metrics,
        settings=LoopSettings(resync_interval_s=resync_interval, stop_timeout_s=stop_timeout,
                              stop_models_on_exit=stop_models_on_exit, max_wait_s=max_wait),
        state=StateFile(paths.state_dir() / f"models.{instance}.state.json"),
    )
    closers.append(prober)
    stream = DockerEventStream(lambda: docker.from_env(timeout=60), events.put, instance=instance)
    watcher = ManifestWatcher(manifests, events.put) if watch else None

    def record(signum: int, frame: FrameType | None) -> None:
        events.put(SignalReceived(signum))    # only record: the loop thread decides

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, record)

    try:
        stream.start()
        stream.connected.wait(5)      # so no die event is missed between the first list and the stream
        if watcher is not None:
            watcher.start()
        else:
            log.info("not watching manifests; apply changes with 'llama-supervisorctl update'",
                     directory=str(manifests))
        closers[:0] = [c for c in (watcher, stream) if c is not None]
        server = _control_server(DaemonController(sup), socket_path, socket_group)
        if server is not None:
            closers.insert(0, server)
        loop = threading.Thread(target=sup.run, name="loop")
        loop.start()
        while loop.is_alive():
            loop.join(0.5)
    finally:
        for c in closers:
            try:
                c.close()
            except Exception as e:  # best effort at exit: report and go on closing the rest
                log.warning("close failed", what=type(c).__name__, error=str(e))
        runtime.close()
        log.info("exited", docker_calls=runtime.call_count)


def _systemd_and_metrics(metrics_port: int | None, closers: list[Any]) -> tuple[Any, Any, float]:
    from supervisor.control.api import NullMetrics, NullNotifier

    notifier: Any = NullNotifier()
    max_wait = 5.0
    try:
        from supervisor import sdnotify

        notifier = sdnotify.SdNotifier.from_env()
        interval = sdnotify.watchdog_interval_s()
        if interval is not None:
            max_wait = min(max_wait, interval)
        if hasattr(notifier, "close"):
            closers.append(notifier)
    except ModuleNotFoundError:
        log.warning("supervisor.sdnotify missing: no systemd notifications")
    metrics: Any = NullMetrics()
    if metrics_port is not None:
        from supervisor.metrics import PrometheusMetrics

        pm = PrometheusMetrics()
        pm.serve(metrics_port)
        closers.append(pm)
        metrics = pm
        log.info("metrics", url=f"http://127.0.0.1:{metrics_port}/metrics")
    return notifier, metrics, max_wait


def _control_server(controller: Any, path: Path, group: str | None) -> Any:
    try:
        from supervisor.control.server import ControlServer
    except ModuleNotFoundError:
        log.warning("supervisor.control.server missing: no control socket")
        return None
    server = ControlServer(controller, path, group=group)
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
        click.echo(f"llama-supervisord: {e}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
