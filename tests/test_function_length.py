"""No function in ``service/`` is longer than 60 lines, from its ``def`` line to its last line
(signature and docstring included, decorators not), methods and nested functions alike: a longer
one is split into named steps."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"
MAX_LINES = 60


def long_functions(root: Path, max_lines: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` for every function under ``root`` longer than ``max_lines``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        functions = [
            node
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        for node in sorted(functions, key=lambda n: n.lineno):
            lines = node.end_lineno - node.lineno + 1
            if lines > max_lines:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_service_is_over_60_lines() -> None:
    assert long_functions(SERVICE) == []


def _function(header: str, body_lines: int, indent: str = "") -> list[str]:
    return [indent + header, *(f"{indent}    x{i} = {i}" for i in range(body_lines - 1))]


def test_the_check_counts_methods_nested_and_async_functions(tmp_path: Path) -> None:
    source = [
        *_function("def ok():", 60),  # lines 1-60: 60 lines, allowed
        "class C:",  # line 61
        *_function("async def long(self):", 61, "    "),  # lines 62-122
        *_function("def outer():", 2),  # lines 123-124
        *_function("def inner():", 61, "    "),  # lines 125-185, so outer runs to 185 too
    ]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("\n".join(source) + "\n")
    assert long_functions(tmp_path / "pkg") == [
        "pkg/m.py:62 long (61 lines)",
        "pkg/m.py:123 outer (63 lines)",
        "pkg/m.py:125 inner (61 lines)",
    ]
