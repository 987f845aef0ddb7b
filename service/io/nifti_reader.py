"""NIfTI-1/2 files (plain or gzip-compressed) read with nibabel; the voxel-to-world affine comes
from :mod:`service.io.nifti_header`'s qform/sform rule."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np

from service.io.nifti_header import nifti_geometry
from service.io.volume_checks import (
    check_affine,
    check_dtype,
    check_voxel_limit,
    effective_shape,
    finish_volume,
    library_errors,
)
from service.volume import Volume


def read_nifti(path: Path, name: str, max_voxels: int, *, compressed: bool) -> Volume:
    """NIfTI-1/2 via nibabel, dtype kept; placed by :mod:`service.io.nifti_header`'s rule.

    ``compressed`` comes from the sniffed bytes, never from the file name: nibabel would pick
    gzip or not by the suffix, so a gzip-compressed ``.nii`` or a plain ``.nii.gz`` would fail
    in batch mode while the same bytes uploaded over HTTP worked.
    """
    with library_errors(f"{name} has an unreadable NIfTI header"), _open_nifti(path, compressed) as fh:
        img = _nifti_from_stream(fh)
        shape = effective_shape(img.shape, name)
        check_voxel_limit(shape, max_voxels, name)
        check_dtype(img.get_data_dtype(), name)
        geometry, warnings = nifti_geometry(img.header, shape, name)
        check_affine(geometry.affine, name)
        with library_errors(f"{name} is truncated or corrupt"):
            array = np.asanyarray(img.dataobj)
    if array.shape != shape:
        array = array.reshape(shape)  # trailing singleton dimensions only
    volume = finish_volume(array, geometry.affine, name, "nifti", warnings)
    volume.meta["nifti_geometry"] = geometry
    return volume


def _open_nifti(path: Path, compressed: bool) -> BinaryIO:
    return gzip.open(path, "rb") if compressed else path.open("rb")


def _nifti_from_stream(fh: BinaryIO) -> nib.Nifti1Image:
    """A NIfTI-1 or -2 image whose voxels are read from ``fh`` (no memory map: the caller's file,
    or our temp copy, may be removed as soon as we return)."""
    sizeof_hdr = fh.read(4)
    fh.seek(0)
    klass = nib.Nifti2Image if 540 in (int.from_bytes(sizeof_hdr, "little"), int.from_bytes(sizeof_hdr, "big")) else nib.Nifti1Image
    holder = nib.FileHolder(fileobj=fh)
    return klass.from_file_map({"header": holder, "image": holder}, mmap=False)
