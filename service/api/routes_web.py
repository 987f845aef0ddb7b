"""The web page for people: ``GET /`` (one HTML page) and its assets under ``/web/``.

Everything the page needs is served from the package (``service/web/``: the page's HTML, JS and
CSS, and the vendored NiiVue bundle in ``service/web/vendor/niivue/``), so it works on a network
without internet. A Content-Security-Policy header lets the page load scripts, styles, images and
connections from this server only, so a browser refuses any request elsewhere. The page shell
needs no API key (it holds no data); the API calls it makes carry ``X-API-Key`` when the server
has a key. The page's settings (label names and colours, whether a key is needed) are embedded
in the HTML as JSON, so it starts without a request that might need the key.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.labels import FLARE23_LABELS
from service.outputs.label_codes import coding_for

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
ASSETS_PATH = "/web"
_CONFIG_MARK = "<!--SWINXSEG_CONFIG-->"
# 'self' only: the page loads nothing from elsewhere (NiiVue decodes in the page: blob: images
# and workers). NiiVue's shaders need no eval.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; worker-src 'self' blob:; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter(tags=["web"])


@lru_cache(maxsize=1)
def _page_template() -> str:
    return (WEB_DIR / "index.html").read_text(encoding="utf-8")


def label_table(request: Request) -> list[dict]:
    """Labels 1.. of the served model (FLARE-23 names when it has none), each with its display
    name and the RGB colour the DICOM outputs use (``service.outputs.label_codes``)."""
    runtime = getattr(request.app.state, "runtime", None)
    segmenter = runtime.model.segmenter if runtime is not None else None
    manifest = getattr(segmenter, "manifest", None)
    names = manifest.labels if manifest is not None and manifest.labels else FLARE23_LABELS
    table = []
    for label, name in sorted((int(k), str(v)) for k, v in names.items()):
        if label == 0:
            continue
        colour = coding_for(label, name).colour if label in FLARE23_LABELS else (255, 255, 0)
        table.append({"label": label, "name": name.replace("_", " "), "colour": list(colour)})
    return table


def page_config(request: Request) -> dict:
    settings = request.app.state.settings
    return {"labels": label_table(request), "api_key_required": bool(settings.api_key)}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def web_page(request: Request) -> HTMLResponse:
    """The single page: upload a CT, follow its job, view and download the results."""
    # Inside <script type="application/json">: "<" as its JSON escape, so no "</script>" can occur.
    config = json.dumps(page_config(request)).replace("<", "\\u003c")
    body = _page_template().replace(_CONFIG_MARK, config)
    return HTMLResponse(body, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                       "Cache-Control": "no-store"})


def mount_assets(app) -> None:
    """Serve ``service/web/`` at ``/web/`` (static files, no key; see the module docstring)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=WEB_DIR), name="web")
