"""One module per responsibility: no module over 500 lines, no class over 300 (issue 13).

A class may be longer only if its docstring says why it is one thing, with a
sentence starting with the marker ``One thing:`` — the reviewer then judges the
reason, and the next person to grow the class sees it.  Files have no such way
out: a module past 500 lines holds more than one concern.

Sizes are counted as the source spans them (``ast``: first to last line,
docstrings and comments included), which is what a reader has to scroll.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PACKAGES = ("protocol", "common", "gateway", "presence", "client", "chinwag")
MAX_FILE_LINES = 500
MAX_CLASS_LINES = 300
MARKER = "One thing:"

def oversized(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Every module over MAX_FILE_LINES and every class over MAX_CLASS_LINES without the marker."""
    found: list[str] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root).as_posix()
            source = path.read_text(encoding="utf-8")
            lines = len(source.splitlines())
            if lines > MAX_FILE_LINES:
                found.append(f"{where}: {lines} lines (max {MAX_FILE_LINES})")
            for node in ast.walk(ast.parse(source, filename=str(path))):
                if not isinstance(node, ast.ClassDef) or node.end_lineno is None:
                    continue
                span = node.end_lineno - node.lineno + 1
                if span > MAX_CLASS_LINES and MARKER not in (ast.get_docstring(node) or ""):
                    found.append(f"{where}:{node.lineno}: class {node.name} is {span} lines (max {MAX_CLASS_LINES}"
                                 f" without a docstring sentence '{MARKER} …')")
    return found


def test_no_module_or_class_is_oversized() -> None:
    assert oversized(ROOT) == [], "split these by concern (docs/architecture.md), or say why a class is one thing"


def _write_class(path: Path, lines: int, docstring: str) -> None:
    body = [f"    x{i} = {i}" for i in range(lines - 2)]
    path.write_text("\n".join([f"class Big:\n    {docstring!r}", *body]) + "\n", encoding="utf-8")


@pytest.mark.parametrize(("lines", "docstring", "caught"), [
    (300, "Fits.", False),
    (301, "Too long and says nothing.", True),
    (301, "One thing: the reason is stated.", False),
    (301, "Mentions one thing: but not as the marker.", True),
])
def test_the_class_limit_is_enforced(tmp_path: Path, lines: int, docstring: str, caught: bool) -> None:
    """The checker itself, on a copy of the layout: a long class fails unless its docstring has the marker."""
    (tmp_path / "client").mkdir()
    _write_class(tmp_path / "client" / "big.py", lines, docstring)
    found = oversized(tmp_path, ("client",))
    assert bool(found) is caught, found


@pytest.mark.parametrize(("lines", "caught"), [(500, False), (501, True)])
def test_the_file_limit_is_enforced(tmp_path: Path, lines: int, caught: bool) -> None:
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "long.py").write_text("x = 1\n" * lines, encoding="utf-8")
    assert bool(oversized(tmp_path, ("gateway",))) is caught
