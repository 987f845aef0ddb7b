"""Index-space geometry between an input CT and the model grid, each step with its exact undo.

reorient to RAS (``orientation``) -> resample to the model spacing (``resample``) -> HU window
(``intensity``) -> body crop (``body``); ``pipeline`` chains them (``preprocess``) and undoes them
for labels (``restore_labels``). Everything runs on torch tensors on any device; the label undo
also takes numpy arrays.
"""

from service.geometry.body import BodyMask, CropBox, body_bounding_box, coarse_factors, crop, uncrop_labels
from service.geometry.intensity import scale_intensity
from service.geometry.orientation import OrientationRecord, apply_to_ras, from_ras, ras_orientation, to_ras
from service.geometry.pipeline import Preprocessed, PreprocessRecord, preprocess, restore_labels
from service.geometry.resample import (
    ResampleRecord,
    resample_consuming,
    resample_to_spacing,
    resampled_affine,
    resampled_shape,
    restore_labels_nearest,
)
from service.preprocess_spec import PreprocessSpec

__all__ = [
    "BodyMask",
    "CropBox",
    "OrientationRecord",
    "PreprocessRecord",
    "PreprocessSpec",
    "Preprocessed",
    "ResampleRecord",
    "apply_to_ras",
    "body_bounding_box",
    "coarse_factors",
    "crop",
    "from_ras",
    "preprocess",
    "ras_orientation",
    "resample_consuming",
    "resample_to_spacing",
    "resampled_affine",
    "resampled_shape",
    "restore_labels",
    "restore_labels_nearest",
    "scale_intensity",
    "to_ras",
    "uncrop_labels",
]
