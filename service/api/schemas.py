"""Response bodies, declared so that ``/openapi.json`` documents them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "done", "failed"]


class ErrorBody(BaseModel):
    error: str = Field(description="stable machine-readable reason, e.g. invalid_input, queue_full")
    detail: str = Field(description="what went wrong, for people")
    request_id: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "loading", "warming_up", "failed", "queue_unreachable"]
    detail: str = ""


class ModelInfo(BaseModel):
    name: str
    preset: str
    labels: dict[int, str]
    roi_size: list[int]
    target_spacing_mm: list[float]
    hu_window: list[float]
    out_channels: int
    backend: str
    precision: str = Field("float32", description="the arithmetic the network really runs in (float32, float16, bfloat16)")
    device: str
    gpu_mem_cap_mb: int
    default_overlap: float
    versions: dict[str, str] = Field(description="exporter versions from the manifest, plus this service's")
    exported_at: str = ""


class JobError(BaseModel):
    error: str
    detail: str


class CaseWarningBody(BaseModel):
    code: str = Field(description="stable machine-readable kind, e.g. orientation_unknown, intensity_not_hu")
    message: str = Field(description="what is doubtful about the input, for people")


class JobLinks(BaseModel):
    self: str
    mask: str = Field(description="the NIfTI mask (always kept, whatever outputs= asked for)")
    preview: str
    statistics: str = Field(description="the organ statistics (GET, once done)")
    outputs: dict[str, str] = Field(
        default_factory=dict, description="one download link per output kind asked for (nifti, rtstruct, seg)"
    )
    image: str = Field(description="the input CT as NIfTI on the mask's grid (jobs submitted with image=true)")


class JobProgress(BaseModel):
    stage: Literal["queued", "reading", "preprocessing", "inference", "writing", "done"] = Field(
        description="queued -> reading (decoding the upload) -> preprocessing -> inference -> writing -> done"
    )
    windows_done: int = Field(description="sliding windows run so far (0 before inference)")
    windows_total: int = Field(description="sliding windows to run (known once inference starts; 0 before)")
    queue_position: int | None = Field(
        None, description="while queued: 1 = next to run (embedded mode; queue mode: place on the job queue)"
    )


class OrganStatisticsBody(BaseModel):
    label: int
    name: str
    voxels: int
    volume_ml: float = Field(description="voxels x voxel volume, mL")
    mean_hu: float = Field(description="mean of the CT values under the label, on the input grid (HU)")
    median_hu: float
    std_hu: float
    centroid_ras_mm: tuple[float, float, float] = Field(description="centre of the label's voxels, RAS+ world mm")
    bbox_min_ras_mm: tuple[float, float, float]
    bbox_max_ras_mm: tuple[float, float, float]


class JobStatistics(BaseModel):
    job_id: str
    coordinates: Literal["RAS+ mm"] = Field(
        "RAS+ mm", description="world frame of centroids and boxes; DICOM LPS is x and y negated"
    )
    organs: list[OrganStatisticsBody]


class JobView(BaseModel):
    id: str
    status: JobStatus
    filename: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = Field(None, description="when a finished job's results are deleted")
    metrics: dict | None = Field(None, description="CaseMetrics of a done job")
    warnings: list[CaseWarningBody] = Field(
        default_factory=list, description="the input's warnings, once it is decoded (docs/SERVICE.md lists the codes)"
    )
    error: JobError | None = None
    outputs: list[str] = Field(default_factory=lambda: ["nifti"], description="the output kinds asked for")
    statistics: list[OrganStatisticsBody] | None = Field(None, description="per organ, once done")
    dicomweb: dict | None = Field(
        None, description="a DICOMweb job (POST /v1/dicomweb/jobs): study_uid, series_uid asked for, source_url, "
        "store_url; chosen_series once fetched; stored (modality, series_uid, sop_instance_uid each), seconds "
        "per step and the passed-over series once done",
    )
    progress: JobProgress | None = Field(
        None, description="stage and windows done of windows to run; null once the job failed"
    )
    links: JobLinks


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "malformed request (empty body, bad multipart)",
        401: "API key missing or wrong (when one is configured)",
        413: "upload or volume larger than the configured limits",
        415: "unsupported media type or file format",
        422: "the CT is not usable, or a parameter is invalid",
        429: "the wait queue is full; see Retry-After",
        500: "unexpected error (details in the server log under the request id)",
        503: "the model is not loaded or warmed up yet",
    }.items()
}
