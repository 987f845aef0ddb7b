"""Typed dependency aliases: routes declare ``segmenter: SegmenterDep`` and tests override the getters
(``app.dependency_overrides[get_segmenter] = ...``)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.cases import SegmenterLike
from service.api.errors import NotReadyError, UnauthorizedError, UseJobsError
from service.api.gpu_guard import GpuGuard
from service.api.jobs import JobStore
from service.api.metrics import ServiceMetrics
from service.api.runtime import Runtime
from service.settings import Settings

# auto_error=False: a missing key is our 401 in our error shape, and only when a key is configured.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the configured API key")
_bearer = HTTPBearer(auto_error=False, description="the configured API key as a bearer token")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReadyError("the service is starting or stopping")
    return runtime


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_loaded_segmenter(runtime: RuntimeDep) -> SegmenterLike:
    """The model once loaded, warmed up or not (for describing it)."""
    if runtime.settings.queue_url:
        raise NotReadyError("this server runs in queue mode: the workers hold the model, the API has none")
    if runtime.model.segmenter is None:
        raise NotReadyError(f"the model is {runtime.model.status.replace('_', ' ')}")
    return runtime.model.segmenter


def get_segmenter(runtime: RuntimeDep) -> SegmenterLike:
    """The model, only once it is ready to take cases (503 with Retry-After before; 409 in queue
    mode, where the workers hold the model: cases go through ``/v1/jobs``)."""
    if runtime.settings.queue_url:
        raise UseJobsError(
            "this server runs in queue mode: POST the CT to /v1/jobs and poll the job (workers run the model)"
        )
    model = runtime.model
    if model.status != "ready" or model.segmenter is None:
        detail = f": {model.detail}" if model.detail else ""
        raise NotReadyError(f"the model is {model.status.replace('_', ' ')}{detail}")
    return model.segmenter


def get_guard(runtime: RuntimeDep) -> GpuGuard:
    return runtime.guard


def get_jobs(runtime: RuntimeDep) -> JobStore:
    return runtime.jobs


def get_job_segmenter(runtime: RuntimeDep) -> SegmenterLike | None:
    """What a job needs: the model in embedded mode, nothing in queue mode (workers run it)."""
    return None if runtime.settings.queue_url else get_segmenter(runtime)


LoadedSegmenterDep = Annotated[SegmenterLike, Depends(get_loaded_segmenter)]
SegmenterDep = Annotated[SegmenterLike, Depends(get_segmenter)]
GuardDep = Annotated[GpuGuard, Depends(get_guard)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
JobSegmenterDep = Annotated[SegmenterLike | None, Depends(get_job_segmenter)]


def require_api_key(
    settings: SettingsDep,
    api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """401 unless the request carries the configured key (``X-API-Key`` or ``Authorization: Bearer``).

    No key configured (unset or empty) means the API is open: the default for a local service.
    """
    expected = settings.api_key
    if not expected:
        return
    offered = api_key or (bearer.credentials if bearer is not None else None)
    if offered is None:
        raise UnauthorizedError("this server requires an API key: send X-API-Key or Authorization: Bearer")
    # Constant-time comparison: the time taken says nothing about how much of the key matched.
    if not secrets.compare_digest(offered.encode(), expected.encode()):
        raise UnauthorizedError("wrong API key")
