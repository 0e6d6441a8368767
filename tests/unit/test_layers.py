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
                ("supervisor.core", "supervisor.control.api", "supervisor.errors")
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
