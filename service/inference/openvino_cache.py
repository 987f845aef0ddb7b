"""OpenVINO's compiled-model cache: where it lives, and what it holds.

Why: OpenVINO compiles ``model.onnx`` for the CPU at every process start (1-2 s for the tiny
network, tens of seconds for the full one on 2 cores, bench/README.md). With OpenVINO's
``CACHE_DIR`` property the compiled blob is written once and imported at the next start instead.
OpenVINO keys each blob by a hash of the graph (weights included), the device and the compile
properties (precision hint, threads), so a new model or another precision gets its own entry and
a stale blob is never served for a changed model. A blob it cannot import (truncated, from another
OpenVINO version) is recompiled and rewritten by OpenVINO itself.

The folder: ``SWINXSEG_OPENVINO_CACHE_DIR``, else ``swinxseg_openvino_cache/`` directly under the
work base (``SWINXSEG_WORK_DIR`` or the system temp folder), a name the start-up sweep
(``swinxseg-*``, :mod:`service.workdir`) never matches, so the cache outlives the process.
``SWINXSEG_OPENVINO_CACHE=false`` turns it off. Old entries are not pruned: one blob per
(model, precision, threads), ~1.5x the ONNX file's size.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.errors import SwinxsegError
from service.settings import Settings
from service.workdir import ensure_base

log = logging.getLogger(__name__)

CACHE_FOLDER = "swinxseg_openvino_cache"
BLOB_SUFFIX = ".blob"  # what OpenVINO's CPU plugin names its cache entries


def openvino_cache_dir(settings: Settings) -> Path | None:
    """The cache folder for this process (created if missing), or None when caching is off.

    An explicit ``openvino_cache_dir`` that cannot be created or written is a configuration error;
    the default location falling through (e.g. a read-only temp folder) only costs the cache, so it
    is logged and the model compiles as before.

    Raises:
        SwinxsegError (``invalid_settings``): ``openvino_cache_dir`` is set and unusable.
    """
    if not settings.openvino_cache:
        return None
    if settings.openvino_cache_dir is not None:
        return ensure_base(settings.openvino_cache_dir, setting="SWINXSEG_OPENVINO_CACHE_DIR")
    try:
        return ensure_base(ensure_base(settings.work_dir) / CACHE_FOLDER, setting="the OpenVINO cache folder")
    except SwinxsegError as exc:
        log.warning("OpenVINO compile cache off: %s", exc)
        return None


def cache_entries(folder: Path) -> list[Path]:
    """The compiled blobs in ``folder``, sorted by name (empty when the folder does not exist)."""
    folder = Path(folder)
    return sorted(folder.glob(f"*{BLOB_SUFFIX}")) if folder.is_dir() else []
