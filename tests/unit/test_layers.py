"""The core stays pure: it imports none of the I/O libraries (STYLE.md, 'Enforce the layers')."""

from __future__ import annotations

import ast
from pathlib import Path

import supervisor.core

FORBIDDEN = {"docker", "httpx", "watchdog", "psutil", "structlog", "requests", "subprocess", "socket"}
CORE = Path(supervisor.core.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("supervisor.") and not node.module.startswith(
                ("supervisor.core", "supervisor.errors")
            ):
                names.add(node.module)
    return names


def test_core_imports_no_io_library() -> None:
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 6
    for f in files:
        bad = {n for n in _imports(f) if n in FORBIDDEN or n.startswith("supervisor.")}
        assert not bad, f"{f.name} imports {sorted(bad)}"


def test_runtime_protocol_module_imports_no_docker() -> None:
    init = CORE.parent / "runtime" / "__init__.py"
    if init.exists():
        assert "docker" not in _imports(init)


def test_core_imports_nothing_from_the_outer_layers() -> None:
    """The core may use the core and the error tree; control, daemon, runtime, gateway and cli use it."""
    outer = ("supervisor.control", "supervisor.daemon", "supervisor.runtime", "supervisor.cli",
             "supervisor.gateway")
    for f in sorted(CORE.glob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        bad = sorted(m for m in mods if m.startswith(outer))
        assert not bad, f"{f.name} imports {bad}"
