"""The top-level packages import each other in one direction only (no package-level cycle), and
the serving package imports none of the training, phantom or benchmark code.

Run ``python tests/test_import_graph.py`` to print the graph.
"""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "model_export", "training", "phantoms", "bench")


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level package -> the files of ``package`` that import it (function-level imports too)."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def import_graph() -> dict[str, dict[str, set[str]]]:
    return {package: imported_packages(package) for package in PACKAGES}


def test_no_cycle_between_top_level_packages():
    graph = import_graph()
    try:
        order = list(TopologicalSorter({p: set(deps) for p, deps in graph.items()}).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle between top-level packages: {exc.args[1]}") from None
    assert order.index("service") < order.index("model_export") < order.index("training")


def test_service_imports_no_training_phantom_or_bench_code():
    assert import_graph()["service"] == {}


def test_model_export_imports_only_service():
    assert set(import_graph()["model_export"]) == {"service"}


if __name__ == "__main__":
    for package, deps in import_graph().items():
        print(f"{package} -> {', '.join(sorted(deps)) or '(none)'}")
    try:
        print("order:", " < ".join(TopologicalSorter({p: set(d) for p, d in import_graph().items()}).static_order()))
    except CycleError as exc:
        print("CYCLE:", exc.args[1])
        sys.exit(1)
