"""systemd/llama-supervisor.service: the directives the daemon relies on; `systemd-analyze verify` where it exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .tools import require

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "llama-supervisor.service"
GATEWAY_SOCKET = UNIT.with_name("llama-supervisor-gateway.socket")
CONTROL_SOCKET = UNIT.with_name("llama-supervisor-control.socket")
VENV_BIN = "/opt/llama-supervisor/venv/bin"


def parse(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in order; keys may repeat, as systemd allows."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"line {number} outside a section: {raw}"
        assert "=" in line, f"line {number} is not KEY=value: {raw}"
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}= set {len(found)} times"
    return found[0]


def test_required_directives() -> None:
    text = UNIT.read_text()
    unit = parse(text)
    service = unit["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "ExecStart": f"{VENV_BIN}/llama-supervisord --manifests /etc/llama-supervisor/manifests",
        "ExecReload": f"{VENV_BIN}/llama-supervisorctl reload",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "StateDirectory": "llama-supervisor",
        "CacheDirectory": "llama-supervisor",
        "RuntimeDirectory": "llama-supervisor",
        "RuntimeDirectoryMode": "0750",
        "RuntimeDirectoryPreserve": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SupplementaryGroups": "docker",
    }
    assert {key: one(service, key) for key in expected} == expected
    assert one(service, "KillMode") in ("mixed", "process")
    # issue 15: 1,100 half-open connections held systemd's default 1024 descriptors
    nofile = one(service, "LimitNOFILE")
    assert int(nofile.split(":")[0]) >= 65536, nofile
    assert "LLAMA_SUPERVISOR_SOCKET=/run/llama-supervisor/control.sock" in values(service, "Environment")
    assert one(unit["Install"], "WantedBy") == "multi-user.target"
    assert "equivalent to root" in text  # the Docker socket warning stays with the unit


def test_socket_units_hold_what_the_daemon_serves() -> None:
    """Socket activation (issue 21): the service needs both sockets, named as the daemon takes them
    (supervisor/cli/listeners.py), at the daemon's default addresses, with the control socket no more
    open than the one the daemon makes itself (0660, its user and group)."""
    service = parse(UNIT.read_text())["Unit"]
    names = f"{GATEWAY_SOCKET.name} {CONTROL_SOCKET.name}"
    assert one(service, "Requires") == names and names in values(service, "After")
    gateway = parse(GATEWAY_SOCKET.read_text())
    assert {k: one(gateway["Socket"], k) for k in ("ListenStream", "FileDescriptorName", "Service")} == {
        "ListenStream": "127.0.0.1:8080", "FileDescriptorName": "gateway", "Service": UNIT.name}
    control = parse(CONTROL_SOCKET.read_text())
    keys = ("ListenStream", "FileDescriptorName", "Service", "SocketUser", "SocketGroup", "SocketMode")
    assert {k: one(control["Socket"], k) for k in keys} == {
        "ListenStream": "/run/llama-supervisor/control.sock", "FileDescriptorName": "control",
        "Service": UNIT.name, "SocketUser": "llama-supervisor", "SocketGroup": "llama-supervisor",
        "SocketMode": "0660"}
    for unit in (gateway, control):
        assert one(unit["Install"], "WantedBy") == "sockets.target"
    # the defaults the daemon checks an inherited socket against
    from supervisor.cli.daemon import GatewayOptions

    assert GatewayOptions().listen == one(gateway["Socket"], "ListenStream")
    assert "LLAMA_SUPERVISOR_SOCKET=/run/llama-supervisor/control.sock" in values(parse(UNIT.read_text())["Service"],
                                                                               "Environment")


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    require("systemd-analyze", why="it checks the unit as systemd would load it")
    analyze = shutil.which("systemd-analyze")
    units = next((d for d in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if d.is_dir()), None)
    assert analyze is not None and units is not None, "systemd-analyze without systemd's unit directory"
    # An image of the installed host: the venv's commands exist (verify checks them) and the
    # host's own units (sysinit.target...) are there for the dependencies.
    root = tmp_path / "root"
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in (UNIT, GATEWAY_SOCKET, CONTROL_SOCKET):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    bin_dir = root / VENV_BIN.lstrip("/")
    bin_dir.mkdir(parents=True)
    for name in ("llama-supervisord", "llama-supervisorctl"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    proc = subprocess.run(
        [analyze, "verify", f"--root={root}", UNIT.name, GATEWAY_SOCKET.name, CONTROL_SOCKET.name],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warnings either (unknown keys, bad values)
