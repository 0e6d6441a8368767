"""sd_listen_fds(3) by hand: the listening sockets a service manager passes (socket activation).

systemd (or `systemd-socket-activate`) opens the sockets of the `.socket` units, keeps them
across the daemon's restarts, and passes them to each new daemon as fds 3, 4, ... with

    LISTEN_PID      the pid they are meant for (ours, or they are not for us: ignored)
    LISTEN_FDS      how many
    LISTEN_FDNAMES  their names, ':'-separated (FileDescriptorName=, `--fdname`)

The three variables are removed from the environment whatever they say, so that no child
(the manifest reader, a host llama-server) takes them for its own, and the fds are made
close-on-exec for the same reason. Bad values are a ConfigError naming the variable.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from supervisor.errors import ConfigError

SD_LISTEN_FDS_START = 3
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
MAX_FDS = 64          # far more than a unit passes; a huge LISTEN_FDS is a mistake, not a request


@dataclass(frozen=True)
class Passed:
    fd: int
    name: str         # "unknown" when LISTEN_FDNAMES is absent, as sd_listen_fds_with_names says


def listen_fds(environ: MutableMapping[str, str] | None = None, *, pid: int | None = None,
               cloexec: bool = True) -> list[Passed]:
    """The fds passed to this process, in order; [] when none are (or they are for another pid).

    `environ` is read and then stripped of LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES (os.environ by default).
    """
    env = os.environ if environ is None else environ
    values = {k: env.get(k) for k in VARIABLES}
    for k in VARIABLES:
        env.pop(k, None)
    want_pid, count, names = values["LISTEN_PID"], values["LISTEN_FDS"], values["LISTEN_FDNAMES"]
    if want_pid is None or count is None:
        return []
    if not want_pid.isdigit():
        raise ConfigError(f"LISTEN_PID={want_pid!r} is not a pid (fix: the service manager sets it; unset it)")
    if int(want_pid) != (os.getpid() if pid is None else pid):
        return []     # meant for the process that exec'd or forked us
    if not count.isdigit() or int(count) > MAX_FDS:
        raise ConfigError(f"LISTEN_FDS={count!r} is not a number of sockets from 0 to {MAX_FDS}"
                          " (fix: the service manager sets it; unset it)")
    n = int(count)
    labels = names.split(":") if names is not None else ["unknown"] * n
    if len(labels) != n:
        raise ConfigError(f"LISTEN_FDNAMES={names!r} names {len(labels)} sockets but LISTEN_FDS={n}"
                          " (fix: one FileDescriptorName= per socket, or as many --fdname names as -l)")
    passed = [Passed(SD_LISTEN_FDS_START + i, label) for i, label in enumerate(labels)]
    if cloexec:
        for p in passed:
            try:
                flags = fcntl.fcntl(p.fd, fcntl.F_GETFD)
                fcntl.fcntl(p.fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            except OSError as e:
                raise ConfigError(f"LISTEN_FDS={n}, but fd {p.fd} ({p.name!r}) is not open: {e.strerror}") from e
    return passed


def listening_socket(passed: Passed, families: tuple[socket.AddressFamily, ...]) -> socket.socket:
    """The socket object for a passed fd, checked: one of `families`, a stream socket, listening.

    Raises ConfigError naming the socket and what it should be; the fd is closed then.
    """
    try:
        sock = socket.socket(fileno=passed.fd)    # family, type and protocol read from the fd
    except OSError as e:
        raise ConfigError(f"inherited fd {passed.fd} ({passed.name!r}) is not a socket: {e.strerror}") from e
    try:
        want = " or ".join(f.name for f in families)
        if sock.family not in families:
            raise ConfigError(f"inherited socket {passed.name!r} (fd {passed.fd}) is {sock.family.name}, not {want}"
                              " (fix: ListenStream= in its .socket unit)")
        if sock.type != socket.SOCK_STREAM:
            raise ConfigError(f"inherited socket {passed.name!r} (fd {passed.fd}) is {sock.type.name}, not a"
                              " stream socket (fix: ListenStream=, not ListenDatagram= or ListenSequentialPacket=)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ConfigError(f"inherited socket {passed.name!r} (fd {passed.fd}) is not listening"
                              " (fix: Accept=no in its .socket unit)")
    except BaseException:
        sock.close()
        raise
    return sock
