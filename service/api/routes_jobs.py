"""The jobs API: submit a CT (202), poll it, fetch its outputs, statistics, preview and CT image, delete it (204)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from service.api.cases import receive_case, run_blocking
from service.api.deps import JobsDep, JobSegmenterDep, RuntimeDep, require_api_key
from service.api.errors import ConflictError, NotFoundError
from service.api.jobs import Job, JobContext, JobStore, iso
from service.api.params import UPLOAD_BODY, FilenameHeader, FilenameQuery, OverlapQuery
from service.api.schemas import (
    ERROR_RESPONSES,
    ErrorBody,
    JobError,
    JobLinks,
    JobProgress,
    JobStatistics,
    JobView,
)
from service.api.uploads import case_name_of
from service.errors import InvalidInputError
from service.io.readers import check_upload_header
from service.outputs.selection import DICOM_OUTPUTS, MEDIA_TYPES, OUTPUT_KINDS, SUFFIXES, parse_outputs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

JobId = Annotated[str, Path(max_length=64, description="the id returned by POST /v1/jobs")]
OutputsQuery = Annotated[
    list[str] | None,
    Query(description="output kinds, comma-separated or repeated: nifti (default), rtstruct, seg; "
          "rtstruct and seg need a zipped DICOM series"),
]
_JOB_ERRORS: dict[int | str, dict] = {status: ERROR_RESPONSES[status] for status in (401, 503)} | {
    404: {"model": ErrorBody, "description": "no such job"},
    409: {"model": ErrorBody, "description": "the job is not done"},
    410: {"model": ErrorBody, "description": "the job's results expired"},
    # Our error shape, not FastAPI's default HTTPValidationError (which these routes never send).
    422: {"model": ErrorBody, "description": "the job id is invalid (longer than 64 characters)"},
}


def job_view(job: Job, store: JobStore, request: Request) -> JobView:
    def link(name: str, **params: str) -> str:
        return request.app.url_path_for(name, job_id=job.id, **params)

    return JobView(
        id=job.id,
        status=job.status,
        filename=job.filename,
        created_at=iso(job.created_at) or "",
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
        expires_at=iso(store.expires_at(job)),
        metrics=job.metrics,
        warnings=job.warnings,
        error=JobError(error=job.error[0], detail=job.error[1]) if job.error else None,
        outputs=list(job.outputs),
        statistics=job.statistics,
        dicomweb=job.dicomweb,
        progress=_progress(job, store),
        links=JobLinks(
            self=link("get_job"), mask=link("get_job_mask"), preview=link("get_job_preview"),
            statistics=link("get_job_statistics"), image=link("get_job_image"),
            outputs={kind: link("get_job_output", kind=kind) for kind in job.outputs},
        ),
    )


def _progress(job: Job, store: JobStore) -> JobProgress | None:
    view = job.progress_view()
    if view is None:
        return None
    if view["stage"] == "queued":
        view["queue_position"] = store.queue_position(job)
    return JobProgress(**view)


def _check_outputs_fit_upload(outputs: tuple[str, ...], upload_format: str) -> None:
    """A DICOM output of an upload that cannot be a DICOM series: refused at submission (422)."""
    asked = [kind for kind in outputs if kind in DICOM_OUTPUTS]
    if asked and upload_format != "zip":
        raise InvalidInputError(
            f"{', '.join(asked)} output needs a DICOM series input (a zip of CT slices); the upload is "
            f"{upload_format}, and no series is invented for it"
        )


def _done(job: Job) -> Job:
    if job.status == "failed" and job.error is not None:
        raise ConflictError(f"job {job.id} failed ({job.error[0]}): {job.error[1]}")
    if job.status != "done":
        raise ConflictError(f"job {job.id} is {job.status}; poll GET /v1/jobs/{job.id} until it is done")
    return job


@router.post(
    "",
    status_code=202,
    summary="Submit a CT for segmentation in the background",
    response_model=JobView,
    openapi_extra=UPLOAD_BODY,
    responses={**ERROR_RESPONSES},
)
async def submit_job(
    request: Request,
    runtime: RuntimeDep,
    segmenter: JobSegmenterDep,
    overlap: OverlapQuery = None,
    preview: Annotated[bool, Query(description="also render preview.png when done")] = True,
    image: Annotated[bool, Query(description="also keep the CT as image.nii.gz (for the web page's viewer)")] = False,
    outputs: OutputsQuery = None,
    filename: FilenameQuery = None,
    x_filename: FilenameHeader = None,
) -> JSONResponse:
    """Same input as ``POST /v1/segment``. Answers at once with the job's id and links (one per
    output asked for); the job holds a queue place (429 when the queue is full) until it has run."""
    kinds = parse_outputs(outputs)  # before the upload: a bad value costs the client nothing
    ticket, upload = await receive_case(
        request,
        guard=runtime.guard,
        settings=runtime.settings,
        filename=filename or x_filename,
        spool_dir=runtime.work_dir,
    )
    context = JobContext(
        segmenter=segmenter, metrics=runtime.metrics, settings=runtime.settings, work_dir=runtime.work_dir
    )
    try:
        # Refuse what can be refused without decoding (format, external data) now, not in the slot.
        upload_format = await run_blocking(check_upload_header, upload.path, filename=upload.reader_filename)
        _check_outputs_fit_upload(kinds, upload_format)
        job = await runtime.jobs.submit(upload, ticket, context, overlap=overlap, want_preview=preview, outputs=kinds,
                                       want_image=image)
    except BaseException:
        ticket.close()  # the job task never started, so the queue place is still ours
        upload.discard()
        raise
    view = job_view(job, runtime.jobs, request)
    return JSONResponse(view.model_dump(mode="json"), status_code=202, headers={"Location": view.links.self})


@router.get("/{job_id}", name="get_job", response_model=JobView, responses=_JOB_ERRORS)
async def get_job(job_id: JobId, jobs: JobsDep, request: Request) -> JobView:
    return job_view(jobs.get(job_id), jobs, request)


@router.get(
    "/{job_id}/mask",
    name="get_job_mask",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "the mask .nii.gz"}, **_JOB_ERRORS},
)
async def get_job_mask(job_id: JobId, jobs: JobsDep) -> FileResponse:
    job = _done(jobs.get(job_id))
    return FileResponse(
        job.mask_path, media_type="application/gzip", filename=f"{case_name_of(job.filename)}_mask.nii.gz"
    )


@router.get(
    "/{job_id}/preview.png",
    name="get_job_preview",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}, "description": "the preview PNG"}, **_JOB_ERRORS},
)
async def get_job_preview(job_id: JobId, jobs: JobsDep) -> FileResponse:
    job = _done(jobs.get(job_id))
    if not job.want_preview:
        raise NotFoundError(f"job {job.id} was submitted with preview=false")
    return FileResponse(
        job.preview_path, media_type="image/png", filename=f"{case_name_of(job.filename)}_preview.png"
    )


@router.get(
    "/{job_id}/outputs/{kind}",
    name="get_job_output",
    response_class=FileResponse,
    responses={
        200: {"content": {media: {} for media in sorted(set(MEDIA_TYPES.values()))},
              "description": "the output file: .nii.gz mask, RTSTRUCT or SEG (application/dicom)"},
        **_JOB_ERRORS,
    },
)
async def get_job_output(
    job_id: JobId, kind: Annotated[str, Path(description=f"one of {', '.join(OUTPUT_KINDS)}")], jobs: JobsDep
) -> FileResponse:
    job = _done(jobs.get(job_id))
    if kind not in job.outputs:
        raise NotFoundError(f"job {job.id} has no {kind} output; it was submitted with outputs={','.join(job.outputs)}")
    return FileResponse(
        job.output_path(kind), media_type=MEDIA_TYPES[kind], filename=f"{case_name_of(job.filename)}{SUFFIXES[kind]}"
    )


@router.get("/{job_id}/statistics", name="get_job_statistics", response_model=JobStatistics, responses=_JOB_ERRORS)
async def get_job_statistics(job_id: JobId, jobs: JobsDep) -> JobStatistics:
    """Per organ present: voxels, volume (mL), mean/median/std HU on the input grid, centroid and
    bounding box in RAS+ world mm (a DICOM viewer's LPS is x and y negated)."""
    job = _done(jobs.get(job_id))
    return JobStatistics(job_id=job.id, organs=job.statistics or [])


@router.get(
    "/{job_id}/image.nii.gz",
    name="get_job_image",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "the input CT as int16 NIfTI"},
               **_JOB_ERRORS},
)
async def get_job_image(job_id: JobId, jobs: JobsDep) -> FileResponse:
    """The CT the job segmented, as NIfTI (HU, int16) with the mask's affine, whatever the upload's
    format (a DICOM series too), so a viewer can show the mask over it. Only for jobs submitted
    with ``image=true`` (the web page does); 404 otherwise."""
    job = _done(jobs.get(job_id))
    if not job.image_path.is_file():
        raise NotFoundError(f"job {job.id} was submitted without image=true: it kept no CT image")
    return FileResponse(
        job.image_path, media_type="application/gzip", filename=f"{case_name_of(job.filename)}_image.nii.gz"
    )


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=_JOB_ERRORS)
async def delete_job(job_id: JobId, jobs: JobsDep) -> Response:
    """Delete a job and its files. A running job stops before its next window batch, then the
    inference slot goes to the next case."""
    jobs.delete(job_id)
    return Response(status_code=204)
