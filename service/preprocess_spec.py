"""The preprocessing a model was trained with, as one record: ``PreprocessSpec``.

Training stores it in its config and in every checkpoint, export copies it from the checkpoint
into the manifest, and the service's ``preprocess`` takes it, so a model trained at another
spacing or HU window is served with exactly what it saw. The paper's values (the defaults here)
are the only constants: a checkpoint without the record (the authors' format) gets them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

# Swin-X Seg's published preprocessing: 96^3 windows on a 1 mm RAS grid, HU clipped to [-250, 250].
PAPER_ROI_SIZE = (96, 96, 96)
PAPER_SPACING_MM = (1.0, 1.0, 1.0)
PAPER_HU_WINDOW = (-250.0, 250.0)


class PreprocessSpec(BaseModel):
    """How a CT becomes the network's input.

    ``roi_size``: sliding-window (and training patch) size in voxels of the model grid.
    ``target_spacing_mm``: the model grid's voxel size (mm) along the RAS axes ``axcodes``.
    ``hu_window``: ``(low, high)`` HU, clipped and mapped linearly to [0, 1].
    ``body_threshold_hu``: the crop box keeps voxels above it; ``None`` = the window's low end
    (see ``crop_threshold_hu``). Invalid values raise ``pydantic.ValidationError`` (a ``ValueError``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    roi_size: tuple[int, int, int] = PAPER_ROI_SIZE
    target_spacing_mm: tuple[float, float, float] = PAPER_SPACING_MM
    hu_window: tuple[float, float] = PAPER_HU_WINDOW
    body_threshold_hu: float | None = None
    axcodes: Literal["RAS"] = "RAS"

    @field_validator("roi_size", "target_spacing_mm")
    @classmethod
    def _positive(cls, value: tuple) -> tuple:
        if any(v <= 0 for v in value):
            raise ValueError(f"expected three positive values, got {list(value)}")
        return value

    @field_validator("hu_window")
    @classmethod
    def _window_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"expected [low, high] with low < high, got {list(value)}")
        return value

    def crop_threshold_hu(self, override: float | None = None) -> float:
        """The crop's HU threshold: ``override`` (``SWINXSEG_BODY_THRESHOLD_HU``) if set, else this
        spec's ``body_threshold_hu``, else the HU window's low end (below it the network sees air)."""
        if override is not None:
            return float(override)
        return float(self.body_threshold_hu if self.body_threshold_hu is not None else self.hu_window[0])

    def replace(self, **changes: object) -> PreprocessSpec:
        """A validated copy with ``changes`` applied."""
        return PreprocessSpec(**{**self.model_dump(), **changes})
