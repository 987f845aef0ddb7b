"""``POST /v1/dicomweb/jobs``: segment a study on the configured PACS (DICOMweb) in the background.

The server and its credentials come from the settings only (``SWINXSEG_DICOMWEB_*``): a request
names a study, never a URL, so the route cannot be pointed at another host. The answer is an
ordinary job (``GET /v1/jobs/{id}``); its ``dicomweb`` part names the chosen series and the stored
Series/SOP Instance UIDs once done. 202 for a new job, 200 for the existing job of the same key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.api.cases import SegmenterLike
from service.api.deps import JobSegmenterDep, RuntimeDep, require_api_key
from service.api.dicomweb_jobs import executor, existing_job, idempotency_key, new_job
from service.api.errors import HttpError
from service.api.jobs import JobContext
from service.api.routes_jobs import job_view
from service.api.schemas import ERROR_RESPONSES, JobView
from service.dicomweb.pipeline import StudyCase
from service.outputs.dicom_common import model_info

router = APIRouter(prefix="/v1/dicomweb", tags=["dicomweb"], dependencies=[Depends(require_api_key)])

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


class DicomWebJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a "url" or credentials field is refused (422)

    study_uid: Annotated[str, Field(max_length=64, pattern=UID_PATTERN, description="Study Instance UID")]
    series_uid: Annotated[str | None, Field(max_length=64, pattern=UID_PATTERN,
                                            description="Series Instance UID; default: the documented choice")] = None
    outputs: list[str] = Field(default_factory=lambda: ["rtstruct"], description="rtstruct (default), seg")


class EmbeddedModeOnlyError(HttpError):
    code, http_status = "dicomweb_jobs_embedded_only", 501


def _segmenter(runtime, segmenter: SegmenterLike | None) -> SegmenterLike:
    if runtime.settings.queue_url or segmenter is None:
        raise EmbeddedModeOnlyError("DICOMweb jobs run in the embedded mode only (SWINXSEG_QUEUE_URL unset)")
    return segmenter


@router.post("/jobs", status_code=202, response_model=JobView, summary="Segment a study on the PACS",
             responses={**ERROR_RESPONSES, 200: {"model": JobView, "description": "the existing job of this key"}})
async def submit_dicomweb_job(body: DicomWebJobRequest, request: Request, runtime: RuntimeDep,
                              segmenter: JobSegmenterDep) -> JSONResponse:
    segmenter = _segmenter(runtime, segmenter)
    case = StudyCase(runtime.settings, study_uid=body.study_uid, series_uid=body.series_uid, outputs=body.outputs)
    key = idempotency_key(body.study_uid, body.series_uid, model_info(segmenter.manifest).manifest_sha256,
                          case.outputs)
    job = existing_job(runtime.jobs, key)
    status = 200
    if job is None:
        ticket = runtime.guard.admit()  # 429 when the queue is full, as for uploads
        context = JobContext(segmenter=segmenter, metrics=runtime.metrics, settings=runtime.settings,
                             work_dir=runtime.work_dir)
        try:
            job = runtime.jobs.start(new_job(runtime.jobs, case, key), ticket, context, executor(case))
        except BaseException:
            ticket.close()
            raise
        status = 202
    view = job_view(job, runtime.jobs, request)
    return JSONResponse(view.model_dump(mode="json"), status_code=status, headers={"Location": view.links.self})
