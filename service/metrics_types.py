"""Plain result types shared by the engine, the batch report and the HTTP layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from service.volume import Volume

STAGES = ("load", "preprocess", "infer", "postprocess", "write")


@dataclass
class CaseMetrics:
    """What one case cost. Seconds per stage, memory in MB (1 MB = 2**20 bytes)."""

    input_shape: tuple[int, int, int] = (0, 0, 0)
    input_spacing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    model_grid_shape: tuple[int, int, int] = (0, 0, 0)  # after reorient + resample + crop
    windows_run: int = 0
    windows_skipped: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    total_seconds: float = 0.0
    peak_gpu_mb_torch_allocated: float | None = None
    peak_gpu_mb_torch_reserved: float | None = None
    peak_gpu_mb_nvml: float | None = None
    peak_rss_mb: float = 0.0
    stitch_buffer_mb: float = 0.0
    device: str = "cpu"
    backend: str = ""
    precision: str = "float32"
    sw_batch_size: int = 1
    fallbacks: list[str] = field(default_factory=list)  # e.g. "oom: sw_batch_size 4 -> 2"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SegmentationResult:
    """The mask on the input's own grid (uint8 FLARE-23 labels) and what it cost."""

    mask: Volume
    metrics: CaseMetrics
