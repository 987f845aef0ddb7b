"""The one image type: a voxel array plus the exact affine that places it in the patient."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image.

    ``array`` is indexed (i, j, k) in the file's own voxel order; ``affine`` (4x4, float64) maps
    voxel indices to RAS+ world coordinates in mm (the nibabel convention), for every format.
    ``meta`` carries provenance (source format, file name), the input's warnings
    (``warnings``, see :mod:`service.case_warnings`) and, for NIfTI inputs, the header's own
    geometry fields (``nifti_geometry``) so a mask on the same affine is written with them; it
    never changes the affine.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D, got shape {self.array.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (i, j, k): the column norms of the affine's 3x3 part."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> Volume:
        """Same geometry, new voxels (e.g. a mask for this image)."""
        if array.shape != self.array.shape:
            raise ValueError(f"new array shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array=array, affine=self.affine.copy(), meta=dict(self.meta))
