"""The HTTP service: ``create_app(settings)`` builds it; ``swinxseg serve`` runs it.

Importing this package builds nothing; import :func:`service.api.app.create_app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: `import service.api.serve_cli` (for `swinxseg --help`) must not import FastAPI and the engine.
    if name == "create_app":
        from service.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
