"""The whole preprocessing chain and its undo for labels.

Forward (what the network sees): reorient to RAS (numpy view, no copy) -> tensor on the device
(float32) -> resample to the model spacing -> body box on the resampled HU image -> crop ->
HU window to [0, 1]. Backward (labels only, all index gathers): uncrop -> nearest resample back
-> undo the reorientation, which lands exactly on the input's own voxel grid.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from service.geometry._arrays import ArrayLike, spatial_shape
from service.geometry.body import BodyMask, CropBox, body_bounding_box, crop, uncrop_labels
from service.geometry.intensity import scale_intensity
from service.geometry.orientation import OrientationRecord, apply_to_ras, from_ras, ras_orientation
from service.geometry.resample import (
    ResampleRecord,
    resample_consuming,
    resampled_affine,
    restore_labels_nearest,
)
from service.preprocess_spec import PreprocessSpec
from service.volume import Volume

log = logging.getLogger(__name__)

# dtypes torch.from_numpy takes as they are and that are no wider than float32: moved to the
# device unconverted (an int16 CT crosses the bus at half the bytes) and cast there.
_NATIVE_DTYPES = frozenset(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.int32, np.float16, np.float32))
# Off-diagonal of the normalised direction Gram matrix above this = a sheared affine.
_SHEAR_TOLERANCE = 1e-4


@dataclass(frozen=True, eq=False)
class PreprocessRecord:
    """Everything needed to map the model grid back to the input's voxel grid.

    ``original_shape`` / ``original_affine``: the input Volume's (I, J, K) and 4x4 voxel -> RAS mm.
    ``orientation``: the axis permutation/flips to RAS. ``resample``: shapes and spacings (mm)
    around resampling. ``crop_box``: the body box on the resampled grid. ``model_spacing``: mm.
    """

    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    orientation: OrientationRecord
    resample: ResampleRecord
    crop_box: CropBox
    model_spacing: tuple[float, float, float]

    @property
    def ras_affine(self) -> np.ndarray:
        """4x4 affine of the RAS-reoriented input array."""
        return self.original_affine @ self.orientation.voxel_map()

    @property
    def resampled_affine(self) -> np.ndarray:
        """4x4 affine of the resampled (uncropped) grid."""
        return resampled_affine(self.ras_affine, self.resample.spacing_in, self.resample.spacing_out)

    @property
    def cropped_affine(self) -> np.ndarray:
        """4x4 affine of the preprocessed image (the crop): voxel -> RAS world mm."""
        shift = np.eye(4)
        shift[:3, 3] = self.crop_box.start
        return self.resampled_affine @ shift

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        return self.crop_box.shape


@dataclass(eq=False)
class Preprocessed:
    """The network's input and how to undo it.

    ``image``: ``(X, Y, Z)`` in [0, 1] on the device. Not frozen on purpose: callers
    ``del prepared.image`` to free device memory once the windows have run.
    ``body``: coarse body mask for skipping windows, in ``image``'s coordinates.
    """

    image: torch.Tensor
    body: BodyMask
    record: PreprocessRecord


def _host_array(array: np.ndarray) -> tuple[np.ndarray, bool]:
    """An array ``torch.from_numpy`` accepts, and whether it is a copy we own.

    Narrow native dtypes stay as they are (copied only if flips left negative strides); float64,
    int64, unsigned 16/32-bit and byte-swapped data become float32 here rather than float64.
    """
    if array.dtype in _NATIVE_DTYPES and array.dtype.isnative:
        if any(stride < 0 for stride in array.strides):
            return array.copy(), True
        return array, False
    return array.astype(np.float32), True


def _to_device(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """``array`` as a ``dtype`` tensor on ``device``; the flag says whether it may be overwritten.

    Two steps on purpose: ``.to(device, dtype)`` in one call casts on the host first, which would
    make a float32 host copy of an int16 CT.
    """
    host, owned = _host_array(array)
    with warnings.catch_warnings():
        # Read-only inputs (memory-mapped files) are fine: a tensor sharing them is never written.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(host)
    tensor = tensor.to(device).to(dtype)
    # A CPU float32 input comes back as the caller's own memory: never write into it.
    owned = owned or tensor.data_ptr() != host.ctypes.data
    return tensor, owned


def _column_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))  # type: ignore[return-value]


def _warn_if_sheared(affine: np.ndarray) -> None:
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    gram = directions.T @ directions
    if np.abs(gram - np.eye(3)).max() > _SHEAR_TOLERANCE:
        log.warning("input affine has non-orthogonal voxel axes (shear); resampling along the voxel axes")


def preprocess(
    volume: Volume,
    spec: PreprocessSpec,
    *,
    body_threshold_hu: float | None = None,
    body_margin_mm: float = 0.0,
    crop_to: str = "foreground",
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> Preprocessed:
    """Turn a CT ``Volume`` (HU) into the network's ``(X, Y, Z)`` [0, 1] image on ``device``.

    ``spec`` (the model's ``PreprocessSpec``: spacing in mm, HU window) says what the network was
    trained on; the crop box (``crop_to``: ``foreground`` or ``body``, see ``service.geometry.body``)
    keeps voxels above ``spec.crop_threshold_hu(body_threshold_hu)`` HU and adds ``body_margin_mm``
    on every side. Raises ``InvalidInputError`` for a volume that cannot be resampled. Peak device memory: the
    larger of (input in its own dtype + its float32 copy) and (source + result of one 1D
    resampling pass), plus bounded temporaries; no float64 volume is ever made.
    """
    device = torch.device(device)
    orientation = ras_orientation(volume.affine, volume.shape)
    ras_affine = volume.affine @ orientation.voxel_map()
    _warn_if_sheared(ras_affine)
    tensor, owned = _to_device(apply_to_ras(volume.array, orientation), device, dtype)
    holder = [tensor]
    del tensor  # handed over, so resampling can free the input volume after its first pass
    image, resample = resample_consuming(holder, _column_spacing(ras_affine), spec.target_spacing_mm)
    owned = owned or any(resample.axis_changes(axis) for axis in range(3))  # a new tensor
    model_affine = resampled_affine(ras_affine, resample.spacing_in, resample.spacing_out)

    box, body = body_bounding_box(
        image,
        threshold=spec.crop_threshold_hu(body_threshold_hu),
        spacing_mm=_column_spacing(model_affine),
        margin_mm=body_margin_mm,
        box_of=crop_to,
    )
    image = crop(image, box)
    if not (owned and image.is_contiguous() and box.is_full(resample.shape_out)):
        # A real copy, so the uncropped volume is freed and the caller's array never written.
        image = image.clone(memory_format=torch.contiguous_format)
    image = scale_intensity(image, spec.hu_window, inplace=True)

    record = PreprocessRecord(
        original_shape=volume.shape,
        original_affine=volume.affine.copy(),
        orientation=orientation,
        resample=resample,
        crop_box=box,
        model_spacing=resample.spacing_out,
    )
    log.info("preprocessed %s %s -> model grid %s, body crop %s (%.0f%% of coarse grid is body)",
             orientation.original_codes, volume.shape, resample.shape_out, box.shape, 100 * body.fraction)
    return Preprocessed(image=image, body=body, record=record)


def restore_labels(labels_cropped: ArrayLike, record: PreprocessRecord) -> np.ndarray:
    """Labels on the preprocessed grid ``(x, y, z)`` -> uint8 array with the input's shape (I, J, K).

    Accepts numpy or torch (any device; the gathers run there, one uint8 copy comes to the host).
    Labels must fit in uint8.
    """
    if spatial_shape(labels_cropped) != record.crop_box.shape or labels_cropped.ndim != 3:
        raise ValueError(
            f"labels shape {tuple(labels_cropped.shape)} != preprocessed image shape {record.crop_box.shape}"
        )
    if isinstance(labels_cropped, torch.Tensor):
        labels: ArrayLike = labels_cropped.to(torch.uint8)
    else:
        labels = np.asarray(labels_cropped).astype(np.uint8, copy=False)
    labels = uncrop_labels(labels, record.crop_box, record.resample.shape_out)
    labels = restore_labels_nearest(labels, record.resample)
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    restored = np.ascontiguousarray(from_ras(labels, record.orientation))
    if restored.shape != record.original_shape:
        raise RuntimeError(f"internal error: restored shape {restored.shape} != input {record.original_shape}")
    return restored
