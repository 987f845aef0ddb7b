"""Write label masks as uint8 NIfTI and CTs as int16 NIfTI, atomically.

Header rules (masks in a file or in memory, and CTs):

- mask voxels are ``uint8`` (labels 0..255; anything outside that range is a ``ValueError``),
  CT voxels ``int16`` HU (rounded; outside -32768..32767 is a ``ValueError``);
- a mask of a NIfTI input (``meta["nifti_geometry"]``, on the same affine) gets the input's own
  geometry fields verbatim: qform and sform with their codes (0 stays 0), pixdim and units
  (always as NIfTI-1, which ITK reads and NIfTI-2 is not), so every reader, whatever its
  qform/sform rule, places the mask exactly where it places the image (see
  :mod:`service.io.nifti_header`);
- any other mask (NRRD, MetaImage, DICOM input) and every CT get the volume's affine as BOTH the
  sform and the qform, each with code 1 (scanner), and ``xyzt_units`` say mm;
- no intensity scaling (``scl_slope`` unset), so readers get the labels back verbatim.

Affine precision: NIfTI stores the sform rows as float32, and nibabel returns the sform on load
when its code is non-zero, so a round trip gives back the affine rounded to float32 (about 6e-8
relative: exact for affines that came from a NIfTI file, within ~5e-5 mm for origins near
800 mm otherwise). The qform is a quaternion plus pixdim (also float32) and can only represent
rotations; for sheared affines it is the closest rotation, which is why the sform is the one
that counts and why readers must prefer it (nibabel does).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import secrets
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np

from service.io.nifti_header import NiftiGeometry
from service.volume import Volume

logger = logging.getLogger(__name__)

# Label masks are mostly zeros; level 6 is close to the best ratio at a fraction of 9's time.
_GZIP_LEVEL = 6
_NIFTI_SCANNER_CODE = 1
#: The one file mode of every output (masks, previews, batch reports): owner read/write, others
#: read; applied explicitly so it does not depend on the process umask or on mkstemp's 0600.
OUTPUT_FILE_MODE = 0o644


def write_mask(volume: Volume, path: Path) -> None:
    """Write ``volume`` as a uint8 NIfTI mask at ``path`` (``.nii.gz`` gzipped, ``.nii`` plain).

    The write is atomic: the bytes go to a hidden temp file in the same folder
    (``.<name>.tmp-<random>``), are fsync'ed, then renamed over ``path``; on any failure the
    temp file is removed and ``path`` is left as it was. The parent folder is created if missing.
    The file's mode is ``OUTPUT_FILE_MODE`` (0644).

    Raises:
        ValueError: labels outside 0..255 (or not whole numbers), or a suffix other than
            ``.nii``/``.nii.gz``.
    """
    _write_atomically(_mask_image(volume), Path(path))
    logger.debug("wrote mask %s %s", path, volume.shape)


def write_ct(volume: Volume, path: Path) -> None:
    """Write ``volume`` (HU) as an int16 NIfTI CT at ``path``, atomically, with ``write_mask``'s header rules.

    Raises:
        ValueError: HU values outside the int16 range, or a suffix other than ``.nii``/``.nii.gz``.
    """
    _write_atomically(_ct_image(volume), Path(path))
    logger.debug("wrote CT %s %s", path, volume.shape)


def _write_atomically(image: nib.Nifti1Image, path: Path) -> None:
    compress = _compress_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    try:
        # "xb": never follow or reuse an existing file of that name.
        with open(tmp, "xb") as fh:
            os.fchmod(fh.fileno(), OUTPUT_FILE_MODE)
            _write_image(image, fh, compress=compress)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def mask_to_nifti_bytes(volume: Volume) -> bytes:
    """The gzipped uint8 NIfTI of ``volume`` in memory, with the same header rules as ``write_mask``."""
    buffer = io.BytesIO()
    _write_image(_mask_image(volume), buffer, compress=True)
    return buffer.getvalue()


def _compress_for(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return True
    if name.endswith(".nii"):
        return False
    raise ValueError(f"mask path must end in .nii.gz or .nii, got {path.name}")


def _mask_labels(array: np.ndarray) -> np.ndarray:
    """The labels as uint8, refusing values a uint8 cannot hold exactly."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "biuf":
        raise ValueError(f"mask voxels must be numeric labels, got dtype {array.dtype}")
    if array.size:
        lo, hi = array.min(), array.max()
        if lo < 0 or hi > 255:
            raise ValueError(f"mask labels must fit in 0..255 (uint8), got values from {lo} to {hi}")
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise ValueError("mask labels must be whole numbers, got fractional values")
    return array.astype(np.uint8)


def _ct_voxels(array: np.ndarray) -> np.ndarray:
    """HU as int16, rounded; refuses values an int16 cannot hold."""
    if array.dtype == np.int16:
        return array
    if array.dtype.kind not in "biuf":
        raise ValueError(f"CT voxels must be numeric HU, got dtype {array.dtype}")
    if array.dtype.kind == "f":
        array = np.rint(array)
    if array.size and (array.min() < -32768 or array.max() > 32767):
        raise ValueError(f"CT HU must fit in int16, got values from {array.min()} to {array.max()}")
    return array.astype(np.int16)


def _mask_image(volume: Volume) -> nib.Nifti1Image:
    labels = _mask_labels(np.asarray(volume.array))
    geometry = volume.meta.get("nifti_geometry")
    if isinstance(geometry, NiftiGeometry) and geometry.places(np.asarray(volume.affine, dtype=np.float64)):
        return _mask_image_like_input(labels, geometry)
    return _scanner_image(labels, volume.affine)


def _ct_image(volume: Volume) -> nib.Nifti1Image:
    return _scanner_image(_ct_voxels(np.asarray(volume.array)), volume.affine)


def _scanner_image(voxels: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """``voxels`` with ``affine`` as sform and qform (code 1), mm units, no intensity scaling."""
    affine = np.asarray(affine, dtype=np.float64)
    header = nib.Nifti1Header()
    header.set_data_dtype(voxels.dtype)
    image = nib.Nifti1Image(voxels, affine, header=header)
    image.set_sform(affine, code=_NIFTI_SCANNER_CODE)
    image.set_qform(affine, code=_NIFTI_SCANNER_CODE)
    image.header.set_xyzt_units(xyz="mm")
    # No scaling: labels and HU must read back verbatim.
    image.header.set_slope_inter(np.nan, np.nan)
    return image


def _mask_image_like_input(labels: np.ndarray, geometry: NiftiGeometry) -> nib.Nifti1Image:
    header = geometry.mask_header()
    header.set_data_dtype(np.uint8)
    # affine=None: nibabel then leaves the copied qform/sform fields exactly as they are.
    image = nib.Nifti1Image(labels, None, header=header)
    image.header.set_slope_inter(np.nan, np.nan)
    return image


def _write_image(image: nib.Nifti1Image, fh: BinaryIO, *, compress: bool) -> None:
    if not compress:
        image.to_stream(fh)
        return
    # mtime=0: identical masks give identical bytes (reproducible outputs, stable checksums).
    with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=_GZIP_LEVEL, mtime=0) as gz:
        image.to_stream(gz)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (best effort: not every platform lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
