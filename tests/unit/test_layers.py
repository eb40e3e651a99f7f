"""Layers point down (docs/architecture.md): a module may import only its own package
and the packages its layer is allowed to see, and no runnable code imports ``tests``.

Every ``import``/``from … import`` in every module is read with ``ast`` (inside
functions and ``TYPE_CHECKING`` blocks too: a lazy import is still a dependency),
resolved to its top-level package and checked against ``MAY_IMPORT``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Each Chinwag package and the Chinwag packages it may import (besides itself).
#   protocol            pure wire format, no I/O
#   common              plumbing: settings, keys, Redis, logs, backoff, metrics, http
#   presence            the presence store (name claims, leases) and its reaper
#   gateway             the WebSocket gateway; it claims names through presence.registry
#   client              the client library and the CLI/Tk clients; neither server side
#   chinwag             the programs that wire services together (server, admin, cluster, loadtest)
#   benchmarks, tools   scripts on top of everything
_BELOW_SERVICES = {"protocol", "common"}
MAY_IMPORT: dict[str, set[str]] = {
    "protocol": set(),
    "common": {"protocol"},
    "presence": _BELOW_SERVICES,
    "gateway": _BELOW_SERVICES | {"presence"},
    "client": _BELOW_SERVICES,
    "chinwag": _BELOW_SERVICES | {"presence", "gateway", "client"},
    "benchmarks": _BELOW_SERVICES | {"presence", "gateway", "client", "chinwag"},
    "tools": _BELOW_SERVICES,
}
OURS = set(MAY_IMPORT) | {"tests"}


def imported_packages(path: Path, package: str) -> set[tuple[int, str]]:
    """(line, top-level package) of every Chinwag package the module at ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside the package it is in
                found.add((node.lineno, package))
            elif node.module:
                found.add((node.lineno, node.module.split(".")[0]))
    return {(line, name) for line, name in found if name in OURS}


def upward_imports(root: Path) -> list[str]:
    """Every import that breaks the rule, as ``file:line: package imports other``."""
    bad: list[str] = []
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, name in sorted(imported_packages(path, package)):
                if name != package and name not in allowed:
                    bad.append(f"{path.relative_to(root)}:{line}: {package} imports {name}")
    return bad


def test_every_package_is_placed_in_a_layer() -> None:
    """A new top-level package must be given a layer here, or nothing would check it."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - OURS == set(), "add the new package to MAY_IMPORT"


def test_no_layer_imports_a_layer_above_it() -> None:
    assert upward_imports(ROOT) == []


@pytest.mark.parametrize(("package", "line", "why"), [
    ("common", "from gateway.server import Gateway", "plumbing importing a service"),
    ("protocol", "import common.keys", "the pure layer importing plumbing"),
    ("presence", "from gateway import store", "presence importing the gateway"),
    ("client", "from presence.registry import Registry", "the client importing a server side"),
    ("gateway", "from chinwag.server import serve", "a service importing a program"),
    ("benchmarks", "from tests.helpers import RedisServer", "runnable code importing tests"),
    ("chinwag", "def f():\n    import tests.helpers", "a lazy import of tests"),
])
def test_an_upward_import_is_caught(tmp_path: Path, package: str, line: str, why: str) -> None:
    """The checker itself: each kind of upward import in a copy of the layout is reported."""
    for name in MAY_IMPORT:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("from . import sibling\n")  # relative: fine
    (tmp_path / package / "bad.py").write_text(line + "\n")
    assert len(upward_imports(tmp_path)) == 1, why
