"""Operations: liveness, readiness, the served model, Prometheus metrics.

``/healthz``, ``/readyz`` and ``/metrics`` never need the API key: orchestrators and Prometheus
poll them without credentials, and they reveal nothing about the data.
"""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from service.api.cases import run_blocking
from service.api.deps import LoadedSegmenterDep, MetricsDep, SettingsDep, require_api_key
from service.api.metrics import CONTENT_TYPE
from service.api.schemas import ERROR_RESPONSES, Health, ModelInfo, Readiness
from service.manifest import ArchitectureConfig, ModelManifest

router = APIRouter(tags=["operations"])
model_router = APIRouter(prefix="/v1", tags=["model"], dependencies=[Depends(require_api_key)])


def service_version() -> str:
    try:
        return metadata.version("swinxseg")
    except metadata.PackageNotFoundError:  # running from a source tree without an install
        return "0+unknown"


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    # Deliberately touches nothing (no model, no GPU): a busy or warming server is still alive.
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the model is loaded and warmed up",
    responses={503: {"model": Readiness, "description": "loading, warming up, or failed"}},
)
async def readyz(request: Request) -> Response:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        body = Readiness(status="loading", detail="the service is starting or stopping")
    elif runtime.settings.queue_url and (reason := await run_blocking(runtime.jobs.check_broker)):
        body = Readiness(status="queue_unreachable", detail=reason)
    else:
        body = Readiness(status=runtime.model.status, detail=runtime.model.detail)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
async def metrics(service_metrics: MetricsDep) -> Response:
    return Response(content=service_metrics.render(), media_type=CONTENT_TYPE)


@model_router.get(
    "/model",
    response_model=ModelInfo,
    summary="The served model: labels, ROI, spacing, intensity window, backend, precision, device",
    responses={status: ERROR_RESPONSES[status] for status in (401, 503)},
)
async def model_info(segmenter: LoadedSegmenterDep, settings: SettingsDep) -> ModelInfo:
    manifest = getattr(segmenter, "manifest", None)
    if manifest is None:  # a bare predictor (tools, tests): describe what is known
        manifest = ModelManifest(name="unknown", architecture=ArchitectureConfig(), labels={})
    return ModelInfo(
        name=manifest.name,
        preset=manifest.preset,
        labels=dict(manifest.labels),
        roi_size=list(manifest.roi_size),
        target_spacing_mm=list(manifest.target_spacing_mm),
        hu_window=list(manifest.hu_window),
        out_channels=manifest.out_channels,
        backend=str(segmenter.backend),
        precision=str(getattr(segmenter, "precision", "float32")),
        device=str(segmenter.device),
        gpu_mem_cap_mb=settings.gpu_mem_cap_mb,
        default_overlap=settings.overlap,
        versions={**manifest.versions, "swinxseg_service": service_version()},
        exported_at=manifest.exported_at,
    )
