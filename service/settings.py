"""The one settings object. CLI flags and the HTTP app both build on it; environment variables
use the ``SWINXSEG_`` prefix (e.g. ``SWINXSEG_GPU_MEM_CAP_MB=4096``). Nothing is read at import."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "demo"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWINXSEG_", extra="ignore")

    # Model and execution
    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Exported model folder (manifest.json + artifacts)")
    backend: Literal["auto", "torchscript", "onnx"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_mem_cap_mb: int = Field(4096, ge=256, description="Hard cap on this process's GPU memory")
    cpu_threads: int = Field(0, ge=0, description="Intra-op threads on the CPU; 0 = all cores")
    inference_precision: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = float16 on CUDA, float32 on CPU"
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

    # Input limits
    max_input_voxels: int = Field(800_000_000, gt=0)
    max_upload_mb: int = Field(2048, gt=0)

    # HTTP service
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    queue_size: int = Field(4, ge=1, description="Requests waiting for the GPU before 429")
    job_ttl_s: int = Field(3600, ge=1)
    work_dir: Path | None = Field(None, description="Where request temp files live; default system temp")
    warmup: bool = True

    # Logging
    log_level: str = "INFO"
    log_json: bool = False
