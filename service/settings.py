"""The one settings object. CLI flags and the HTTP app both build on it; environment variables
use the ``SWINXSEG_`` prefix (e.g. ``SWINXSEG_GPU_MEM_CAP_MB=4096``). Nothing is read at import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.case_warnings import WARNING_CODES

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "demo"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWINXSEG_", extra="ignore")

    # Model and execution
    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Exported model folder (manifest.json + artifacts)")
    backend: Literal["auto", "torchscript", "onnx", "openvino"] = Field(
        "auto",
        description="auto = TorchScript on CUDA; on the CPU OpenVINO if installed, else ONNX Runtime, else TorchScript",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_mem_cap_mb: int = Field(4096, ge=256, description="Hard cap on this process's GPU memory")
    cpu_threads: int = Field(0, ge=0, description="Intra-op threads on the CPU; 0 = all cores")
    inference_precision: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="auto = float16 on CUDA, float32 on CPU. OpenVINO runs bfloat16 only where the CPU has it "
        "(else float32, said in the log and metrics); ONNX Runtime runs the export's precision",
    )

    openvino_cache: bool = Field(
        True,
        description="Keep OpenVINO's compiled model on disk (its CACHE_DIR), so the next start imports it "
        "instead of compiling again",
    )
    openvino_cache_dir: Path | None = Field(
        None, description="The OpenVINO compile cache folder; default <work_dir>/swinxseg_openvino_cache"
    )

    # Sliding window
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(0, ge=0, description="Windows per forward pass; 0 = sized to the memory cap")
    gaussian_sigma_scale: float = Field(0.125, gt=0.0)
    skip_empty_windows: bool = True
    accumulate_precision: Literal["auto", "float32", "float16"] = Field(
        "auto", description="Stitching accumulator; auto = float16 (halves the slab buffer; argmax unaffected but for near-ties)"
    )

    # Body crop
    # Why these defaults: the network sees HU clipped to the model's window, so every voxel at or
    # below the window's low end (-250 HU) reaches it as the same 0 as air. A box with no margin
    # around the voxels above that level therefore drops nothing the network could see; with
    # crop_to="foreground" it is exactly the reference pipeline's CropForeground box: the same
    # windows, so the same masks. None = the model's PreprocessSpec.crop_threshold_hu() (its HU
    # window's low end unless the model's record names another threshold).
    body_threshold_hu: float | None = None
    body_margin_mm: float = Field(0.0, ge=0.0)
    crop_to: Literal["foreground", "body"] = Field(
        "foreground",
        description="Crop box: everything above the threshold, table included (the reference pipeline's "
        "box, so the same window grid and masks), or the body component alone (fewer windows when a "
        "table is in view). Windows that do not touch the body are skipped either way.",
    )

    # Input limits (docs/SERVICE.md, "Limits and security", lists each with its reason)
    max_input_voxels: int = Field(800_000_000, gt=0, description="Voxels of the input volume, from its header (413)")
    max_upload_mb: int = Field(2048, gt=0, description="Upload body size in MiB (413)")
    max_model_grid_voxels: int = Field(
        200_000_000,
        gt=0,
        description="Voxels of the resampled model grid and of every resampling pass, computed from the "
        "header's shape and spacing before anything is allocated (413); 200 M float32 = 800 MB",
    )
    max_windows_per_case: int = Field(
        4096, gt=0, description="Sliding windows of one case (crop + overlap), counted before any runs (422)"
    )
    max_zip_members: int = Field(20_000, gt=0, description="Entries of an uploaded or batch DICOM zip (413)")
    upload_idle_timeout_s: float = Field(
        30.0, gt=0, description="Seconds an upload may send nothing before it is dropped (408)"
    )
    upload_min_bytes_per_s: int = Field(
        65_536, ge=0, description="Average upload rate an upload must keep after the grace period (408); 0 = off"
    )
    upload_rate_grace_s: float = Field(
        10.0, ge=0, description="Seconds from the start of an upload before the minimum rate applies"
    )

    # Input warnings that refuse the case instead (422 warning_refused). Empty by default: each
    # warning is a doubt about the input, not proof that it is wrong, and it reaches the user in
    # the report, the job status and the response headers either way.
    refuse_warnings: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(),
        description="Warning codes that refuse the case (comma-separated in the environment, "
        "e.g. orientation_unknown,intensity_not_hu); see docs/SERVICE.md for the codes",
    )

    # HTTP service
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    queue_size: int = Field(4, ge=1, description="Requests waiting for the GPU before 429")
    job_ttl_s: int = Field(3600, ge=1)
    work_dir: Path | None = Field(
        None,
        description="Where every temp file lives (uploads, zip extraction, jobs); created if missing; "
        "default the system temp folder. Start-up removes what a previous, dead process left there",
    )
    warmup: bool = True
    storage_dir: Path | None = Field(
        None,
        description="Where job records and results live, so that they survive a restart (a folder every "
        "queue worker sees in queue mode: a mounted volume or PVC); default <work_dir>/swinxseg_jobs",
    )

    # Queue mode (docs/SERVICE.md, "Scaling out"): set queue_url and the API enqueues jobs for
    # `swinxseg worker` processes instead of running them itself.
    queue_url: str | None = Field(
        None, description="Celery broker and result backend, e.g. redis://redis:6379/0; unset = embedded mode"
    )
    queue_name: str = Field("swinxseg", min_length=1, description="The Celery queue the workers consume")
    queue_visibility_timeout_s: int = Field(
        7200,
        ge=1,
        description="Seconds before a job taken by a worker that died is delivered again; longer than "
        "the slowest case (a case still running then is delivered twice; results are idempotent)",
    )
    worker_metrics_port: int = Field(9101, ge=0, description="Prometheus port of `swinxseg worker`; 0 = none")

    # DICOMweb / PACS (docs/PACS.md). Credentials come from here only, never from a request.
    dicomweb_url: str | None = Field(
        None, description="DICOMweb base URL of the PACS (QIDO/WADO/STOW-RS), e.g. http://orthanc:8042/dicom-web"
    )
    dicomweb_username: str | None = Field(None, description="HTTP basic user for the DICOMweb server")
    dicomweb_password: SecretStr | None = Field(None, description="HTTP basic password for the DICOMweb server")
    dicomweb_token: SecretStr | None = Field(
        None, description="Bearer token for the DICOMweb server (instead of basic credentials)"
    )
    dicomweb_store_url: str | None = Field(
        None, description="Where STOW-RS sends the RTSTRUCT/SEG (e.g. a planning system); default dicomweb_url"
    )
    dicomweb_store_username: str | None = Field(None, description="HTTP basic user of dicomweb_store_url")
    dicomweb_store_password: SecretStr | None = Field(None, description="HTTP basic password of dicomweb_store_url")
    dicomweb_store_token: SecretStr | None = Field(None, description="Bearer token of dicomweb_store_url")
    dicomweb_timeout_s: float = Field(
        30.0, gt=0, description="Seconds to connect to the DICOMweb server and between bytes of its answer"
    )
    dicomweb_retries: int = Field(
        3, ge=0, le=10, description="Retries of a DICOMweb request after a connection error, timeout or 429/502/503/504"
    )
    dicomweb_backoff_s: float = Field(
        0.5, ge=0, description="First retry delay in seconds; doubles with each retry"
    )

    # Logging
    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("refuse_warnings", mode="before")
    @classmethod
    def _parse_refuse_warnings(cls, value: object) -> frozenset[str]:
        """Accept ``"a,b"`` (the environment) or any iterable of codes; refuse unknown codes."""
        if value is None:
            return frozenset()
        items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        codes = frozenset(str(item).strip() for item in items if str(item).strip())
        unknown = sorted(codes - WARNING_CODES.keys())
        if unknown:
            raise ValueError(f"unknown warning codes {unknown}; known: {sorted(WARNING_CODES)}")
        return codes

