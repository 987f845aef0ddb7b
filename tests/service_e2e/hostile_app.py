"""``python tests/service_e2e/hostile_app.py``: the formula app served the way ``swinxseg serve``
serves a model (our logging, the JSON-400 h11 protocol, the work-folder checks), configured
from the ``SWINXSEG_*`` environment. For the end-to-end tests of issue 15."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def main() -> int:
    sys.path[:0] = [str(TESTS), str(TESTS.parent)]
    from service_e2e.formula_app import create_formula_app

    from service.api.serve_cli import serve_app
    from service.logs import configure_logging
    from service.settings import Settings
    from service.workdir import ensure_base

    settings = Settings()
    configure_logging(level=settings.log_level, json_lines=settings.log_json)
    ensure_base(settings.work_dir)
    return serve_app(create_formula_app(settings), settings)


if __name__ == "__main__":
    sys.exit(main())
