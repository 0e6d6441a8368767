"""The listening sockets llama-supervisord inherits under socket activation, checked against its options.

systemd's `llama-supervisor-gateway.socket` and `llama-supervisor-control.socket` hold the gateway's
TCP socket and the control socket across daemon restarts, passed as LISTEN_FDS with the names
`gateway` and `control` (FileDescriptorName=). A connection made while no daemon runs (a restart,
an upgrade, a crash) waits in the kernel's queue and is answered by the next daemon, instead of
being refused.

The options still say where the daemon listens: an inherited socket must be bound to the address
--gateway-listen (or the path the control socket option) names, or the daemon refuses to start and
says which unit to fix. (The gateway's Host allowlist and the ctl's socket path follow the options,
so a socket elsewhere would be answered wrongly or not found.) A socket with another name is an error too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from supervisor.daemon import listenfds
from supervisor.errors import ConfigError
from supervisor.gateway.server import parse_listen

GATEWAY = "gateway"
CONTROL = "control"


@dataclass(frozen=True)
class Listeners:
    gateway: socket.socket | None = None
    control: socket.socket | None = None

    @property
    def any(self) -> bool:
        return self.gateway is not None or self.control is not None


def inherit(*, gateway_listen: str | None, environ: MutableMapping[str, str] | None = None,
            pid: int | None = None) -> Listeners:
    """The sockets passed to this process (none: Listeners()), the gateway's checked against gateway_listen
    (None: --no-gateway). The control socket's path and mode are checked by ControlServer."""
    passed = listenfds.listen_fds(environ, pid=pid)
    taken: dict[str, socket.socket] = {}
    try:
        for p in passed:
            if p.name not in (GATEWAY, CONTROL):
                raise ConfigError(f"an inherited socket (fd {p.fd}) is named {p.name!r}: llama-supervisord takes"
                                  f" {GATEWAY!r} and {CONTROL!r} (fix: FileDescriptorName= in its .socket unit,"
                                  " or --fdname for systemd-socket-activate)")
            if p.name in taken:
                raise ConfigError(f"two inherited sockets are named {p.name!r} (fix: one ListenStream= per .socket unit)")
            families = (socket.AF_INET, socket.AF_INET6) if p.name == GATEWAY else (socket.AF_UNIX,)
            taken[p.name] = listenfds.listening_socket(p, families)
        gateway = taken.get(GATEWAY)
        if gateway is not None:
            if gateway_listen is None:
                raise ConfigError("the gateway's socket is inherited but the daemon runs with --no-gateway"
                                  " (fix: drop --no-gateway, or stop and disable llama-supervisor-gateway.socket)")
            check_gateway(gateway, gateway_listen)
    except BaseException:
        for sock in taken.values():
            sock.close()
        raise
    return Listeners(gateway=gateway, control=taken.get(CONTROL))


def check_gateway(sock: socket.socket, listen: str) -> None:
    """ConfigError unless `sock` is bound to the HOST:PORT `listen` names."""
    host, port = parse_listen(listen)
    bound = sock.getsockname()
    got_host, got_port = str(bound[0]), int(bound[1])
    try:
        same_host = ipaddress.ip_address(got_host) == ipaddress.ip_address(host)
    except ValueError:   # a name, such as localhost: the addresses it stands for
        try:
            same_host = got_host in {a[4][0] for a in socket.getaddrinfo(host, port, sock.family, socket.SOCK_STREAM)}
        except OSError:
            same_host = False
    if not same_host or got_port != port:
        shown = f"[{got_host}]:{got_port}" if ":" in got_host else f"{got_host}:{got_port}"
        raise ConfigError(f"the inherited gateway socket is bound to {shown}, but --gateway-listen says {listen}"
                          f" (fix: the same address in both: ListenStream= in llama-supervisor-gateway.socket"
                          f" and --gateway-listen or LLAMA_SUPERVISOR_GATEWAY)")
