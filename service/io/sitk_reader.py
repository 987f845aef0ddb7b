"""NRRD and MetaImage files read with SimpleITK, and SimpleITK's geometry (LPS, array in z, y, x
order) converted to a :class:`~service.volume.Volume` (array (i, j, k), RAS+ affine) as
docs/ARCHITECTURE.md specifies. The DICOM series reader uses the same conversion."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.case_warnings import CaseWarning
from service.errors import InvalidInputError
from service.io.formats import FORMAT_LABELS
from service.io.volume_checks import (
    check_affine,
    check_voxel_limit,
    effective_shape,
    finish_volume,
    library_errors,
)
from service.volume import Volume

if TYPE_CHECKING:
    import SimpleITK as sitk


def simpleitk():
    """SimpleITK, imported on first use: NIfTI is read by nibabel, and the import costs ~90 MB of
    resident memory that a NIfTI-only batch or server process never needs."""
    import SimpleITK

    return SimpleITK


_SITK_IMAGE_IO = {"nrrd": "NrrdImageIO", "metaimage": "MetaImageIO"}


def read_sitk_file(path: Path, name: str, fmt: str, max_voxels: int) -> Volume:
    """NRRD or MetaImage via SimpleITK; size and geometry are checked from the header first."""
    label = FORMAT_LABELS[fmt]
    reader = simpleitk().ImageFileReader()
    # Pin the ImageIO: ITK would otherwise try every reader it has, by suffix and by content.
    reader.SetImageIO(_SITK_IMAGE_IO[fmt])
    reader.SetFileName(str(path))
    with library_errors(f"{name} is not a readable {label} file"):
        reader.ReadImageInformation()
    shape = effective_shape(reader.GetSize(), name)
    if reader.GetNumberOfComponents() != 1:
        raise InvalidInputError(
            f"{name} has {reader.GetNumberOfComponents()} components per voxel (a colour or vector image); "
            "a CT volume has one"
        )
    check_voxel_limit(shape, max_voxels, name)
    affine = sitk_geometry_to_ras_affine(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
    check_affine(affine, name)
    with library_errors(f"{name} is truncated or corrupt"):
        image = reader.Execute()
    array = _sitk_array(image).reshape(shape)
    return finish_volume(array, affine, name, fmt)


def sitk_geometry_to_ras_affine(
    direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]
) -> np.ndarray:
    """The 4x4 RAS+ affine of a SimpleITK (LPS) geometry; extra dimensions beyond 3 are dropped.

    ``affine[:3,:3] = diag(-1,-1,1) @ direction @ diag(spacing)``,
    ``affine[:3,3] = diag(-1,-1,1) @ origin`` (mm), as docs/ARCHITECTURE.md specifies.
    """
    dim = len(spacing)
    direction3 = np.asarray(direction, dtype=np.float64).reshape(dim, dim)[:3, :3]
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction3 @ np.diag(np.asarray(spacing, dtype=np.float64)[:3])
    affine[:3, 3] = lps_to_ras @ np.asarray(origin, dtype=np.float64)[:3]
    return affine


def _sitk_array(image: sitk.Image) -> np.ndarray:
    """Voxels in (i, j, k) order: SimpleITK's (z, y, x) array reversed (a view, no copy)."""
    array = simpleitk().GetArrayFromImage(image)
    return array.transpose(tuple(range(array.ndim - 1, -1, -1)))


def volume_from_sitk(
    image: sitk.Image, *, name: str = "image", source_format: str = "sitk", warnings: Sequence[CaseWarning] = ()
) -> Volume:
    """A 3D SimpleITK image as a Volume (array (i, j, k), RAS+ affine), with the usual checks."""
    shape = effective_shape(image.GetSize(), name)
    affine = sitk_geometry_to_ras_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    check_affine(affine, name)
    return finish_volume(_sitk_array(image).reshape(shape), affine, name, source_format, warnings)
