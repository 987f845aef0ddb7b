"""``POST /v1/segment``: a CT in, its mask (or a PNG preview) out, in one request."""

from __future__ import annotations

import json
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from service.api.cases import (
    CaseOutcome,
    decode_upload,
    encode_dicom_output,
    encode_mask,
    preview_png_bytes,
    receive_case,
    run_blocking,
    segment_case,
)
from service.api.deps import RuntimeDep, SegmenterDep, require_api_key
from service.api.params import UPLOAD_BODY, FilenameHeader, FilenameQuery, OverlapQuery
from service.api.schemas import ERROR_RESPONSES
from service.case_warnings import WARNINGS_HEADER, as_dicts, header_value
from service.metrics_types import CaseMetrics
from service.outputs.selection import DICOM_OUTPUTS, MEDIA_TYPES, SUFFIXES

router = APIRouter(prefix="/v1", tags=["segment"], dependencies=[Depends(require_api_key)])

NIFTI_MEDIA_TYPE = "application/gzip"
PNG_MEDIA_TYPE = "image/png"


def peak_gpu_mb(metrics: CaseMetrics) -> str:
    """The header value: NVML's process figure when known (what the cap and ``nvidia-smi`` see,
    CUDA context included), else torch's reserved then allocated peak; ``n/a`` on the CPU."""
    for value in (metrics.peak_gpu_mb_nvml, metrics.peak_gpu_mb_torch_reserved, metrics.peak_gpu_mb_torch_allocated):
        if value is not None:
            return f"{value:.1f}"
    return "n/a"


def case_headers(outcome: CaseOutcome, *, filename: str) -> dict[str, str]:
    metrics = outcome.metrics
    # The metrics header repeats the warnings so that a client reading only it still sees them.
    metrics_body = {**metrics.to_dict(), "warnings": as_dicts(outcome.warnings)}
    return {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Runtime-Seconds": f"{outcome.case_seconds():.3f}",
        "X-Queue-Seconds": f"{outcome.queue_seconds:.3f}",
        "X-Peak-GPU-MB": peak_gpu_mb(metrics),
        # ensure_ascii: header values must be latin-1; separators: keep the header compact.
        "X-Segmentation-Metrics": json.dumps(metrics_body, separators=(",", ":"), ensure_ascii=True),
        WARNINGS_HEADER: header_value(outcome.warnings),
    }


@router.post(
    "/segment",
    summary="Segment one CT and return its mask",
    response_class=Response,
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {
            "description": "the mask as .nii.gz (format=nifti) or a PNG preview (format=png)",
            "content": {NIFTI_MEDIA_TYPE: {}, PNG_MEDIA_TYPE: {}},
        },
        **ERROR_RESPONSES,
    },
)
async def segment(
    request: Request,
    runtime: RuntimeDep,
    segmenter: SegmenterDep,
    overlap: OverlapQuery = None,
    output_format: Annotated[
        Literal["nifti", "png", "rtstruct", "seg"],
        Query(alias="format", description="nifti: the uint8 mask on the input's grid; png: a preview image; "
              "rtstruct / seg: a DICOM RT Structure Set / Segmentation on the input series (DICOM input only)"),
    ] = "nifti",
    filename: FilenameQuery = None,
    x_filename: FilenameHeader = None,
) -> Response:
    """The mask comes back on the input's own voxel grid (same shape and affine) as a gzipped
    uint8 NIfTI with FLARE-23 labels; headers carry the runtime, the peak GPU memory and the
    full case metrics; ``X-Segmentation-Warnings`` lists the input's warnings as JSON
    (``[]`` when none). ``format=png`` returns a preview of three orthogonal slices instead."""
    settings = runtime.settings
    ticket, upload = await receive_case(
        request, guard=runtime.guard, settings=settings, filename=filename or x_filename, spool_dir=runtime.work_dir
    )
    with ticket, upload:  # the spool file goes as soon as the case has run
        outcome = await segment_case(
            partial(
                decode_upload,
                upload,
                settings=settings,
                work_dir=runtime.work_dir,
                refuse_warnings=settings.refuse_warnings,
                outputs=(output_format,) if output_format in DICOM_OUTPUTS else (),
            ),
            segmenter=segmenter,
            ticket=ticket,
            overlap=overlap,
        )
    case_name, title = upload.case_name, upload.filename
    if output_format == "png":
        body = await run_blocking(preview_png_bytes, outcome, work_dir=runtime.work_dir, title=title)
        media_type, out_name = PNG_MEDIA_TYPE, f"{case_name}_preview.png"
    elif output_format in DICOM_OUTPUTS:
        body = await run_blocking(encode_dicom_output, output_format, outcome, segmenter.manifest)
        media_type, out_name = MEDIA_TYPES[output_format], f"{case_name}{SUFFIXES[output_format]}"
    else:
        body = await run_blocking(encode_mask, outcome)
        media_type, out_name = NIFTI_MEDIA_TYPE, f"{case_name}_mask.nii.gz"
    runtime.metrics.observe_case(
        outcome.metrics, case_seconds=outcome.case_seconds(), queue_seconds=outcome.queue_seconds
    )
    return Response(content=body, media_type=media_type, headers=case_headers(outcome, filename=out_name))
