"""The app factory and its lifespan. Nothing here runs at import: call :func:`create_app`.

Startup (lifespan): make the per-app temp folder (:mod:`service.workdir`, which also removes
what dead servers left), load the model (a failure stops the server,
which is what an operator wants from a bad model folder), then warm it up in the background so
``/healthz`` answers at once and ``/readyz`` turns 200 only when the first request will be fast.
Shutdown: stop the reaper, cancel queued jobs, wait for a running inference, remove the folder.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI

from service.api import routes_dicomweb, routes_jobs, routes_ops, routes_segment, routes_web
from service.api.cases import SegmenterLike, run_blocking
from service.api.errors import install_error_handlers
from service.api.gpu_guard import GpuGuard
from service.api.jobs import JobStore
from service.api.metrics import ServiceMetrics
from service.api.middleware import RequestContextMiddleware
from service.api.routes_ops import service_version
from service.api.runtime import Runtime
from service.settings import Settings
from service.storage import storage_root
from service.workdir import claim_work_dir

log = logging.getLogger(__name__)

DESCRIPTION = """\
Segments abdominal CT scans (13 FLARE-23 organs + tumour) with Swin-X Seg under a hard GPU
memory cap. Send a CT (NIfTI, NRRD, MHA or a zip of a DICOM series) to `POST /v1/segment` for
the mask in one request, or to `POST /v1/jobs` to poll for it. One inference runs at a time;
a full wait queue answers 429 with `Retry-After`.
"""


def create_app(settings: Settings, *, segmenter: SegmenterLike | None = None) -> FastAPI:
    """Build the app. ``segmenter``: serve this one (tests, tools) instead of loading
    ``Segmenter(settings)`` from ``settings.model_dir`` at startup."""
    app = FastAPI(
        title="swinxseg",
        version=service_version(),
        description=DESCRIPTION,
        lifespan=_lifespan(segmenter),
    )
    app.state.settings = settings
    app.state.metrics = metrics = ServiceMetrics(gpu_mem_cap_mb=settings.gpu_mem_cap_mb)
    app.state.runtime = None
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.include_router(routes_ops.router)
    app.include_router(routes_ops.model_router)
    app.include_router(routes_segment.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_dicomweb.router)
    app.include_router(routes_web.router)
    routes_web.mount_assets(app)
    return app


def build_segmenter(settings: Settings) -> SegmenterLike:
    # Imported here so that importing the API does not import torch and the engine.
    from service.segmenter import Segmenter

    return Segmenter(settings)


def _lifespan(injected: SegmenterLike | None) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings: Settings = app.state.settings
        claimed = claim_work_dir(settings.work_dir)  # sweeps what dead servers left behind
        work_dir = claimed.path
        try:
            runtime = _start_runtime(app, settings, work_dir)
            background = [asyncio.create_task(runtime.jobs.reap_forever(), name="swinxseg-job-reaper")]
            if settings.queue_url:  # queue mode: the workers hold the model, not the API
                runtime.model.mark("ready", "queue mode: the workers run the model")
            else:
                segmenter = injected if injected is not None else await run_blocking(build_segmenter, settings)
                runtime.model.segmenter = segmenter
                _describe_model(runtime, segmenter)
                background.append(asyncio.create_task(_warm_up(runtime, segmenter), name="swinxseg-warmup"))
            app.state.runtime = runtime
            try:
                yield
            finally:
                app.state.runtime = None
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                await runtime.jobs.close()
        finally:
            claimed.release()
            log.info("stopped; removed %s", work_dir)

    return lifespan


def _start_runtime(app: FastAPI, settings: Settings, work_dir: Path) -> Runtime:
    # The guard's semaphore belongs to the running event loop, hence built here, not in create_app.
    metrics: ServiceMetrics = app.state.metrics
    runtime = Runtime(
        settings=settings,
        metrics=metrics,
        work_dir=work_dir,
        guard=GpuGuard(settings.queue_size),
        jobs=_job_store(settings, work_dir),
    )
    runtime.jobs.recover()
    metrics.watch(
        queue_depth=lambda: runtime.guard.waiting,
        in_flight=lambda: runtime.guard.in_flight,
        jobs_stored=lambda: len(runtime.jobs),
    )
    if settings.queue_url:
        metrics.watch_job_queue(depth=runtime.jobs.queue_depth, oldest_wait_s=runtime.jobs.oldest_wait_s)
    return runtime


def _job_store(settings: Settings, work_dir: Path) -> JobStore:
    if not settings.queue_url:
        return JobStore(storage_root(settings), ttl_s=settings.job_ttl_s, owner=work_dir)
    from service.api.queue_jobs import QueueJobStore  # Celery only in queue mode
    from service.queue.celery_app import make_celery

    return QueueJobStore(storage_root(settings), settings=settings, celery=make_celery(settings))  # type: ignore[return-value]


def _describe_model(runtime: Runtime, segmenter: SegmenterLike) -> None:
    manifest = getattr(segmenter, "manifest", None)
    name = manifest.name if manifest is not None else "unknown"
    precision = getattr(segmenter, "precision", None)  # what runs, as the segmenter resolved it
    runtime.metrics.set_model(
        name=name, backend=str(segmenter.backend), device=str(segmenter.device), precision=precision
    )
    log.info("serving model %s (%s on %s in %s)", name, segmenter.backend, segmenter.device, precision)


async def _warm_up(runtime: Runtime, segmenter: SegmenterLike) -> None:
    if not runtime.settings.warmup:
        runtime.model.mark("ready")
        return
    runtime.model.mark("warming_up")
    try:
        # abandon_on_cancel: a shutdown during warm-up need not wait for it (no request uses the GPU yet).
        await anyio.to_thread.run_sync(segmenter.warmup, abandon_on_cancel=True)
    except Exception as exc:
        log.exception("model warm-up failed")
        runtime.model.mark("failed", f"warm-up failed: {exc}")
        return
    runtime.model.mark("ready")
