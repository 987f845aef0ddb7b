"""Checks every reader runs on what a header says and on the voxels, and the one way a third-party
library's exception becomes a typed error of :mod:`service.errors` with the file name in it.

Shape, voxel count, voxel type and affine are checked from the header, before any voxel is read;
:func:`finish_volume` checks the voxels themselves (finite) and wraps them in a
:class:`~service.volume.Volume` with the case's warnings.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from service.case_warnings import CONSTANT_INTENSITY, CaseWarning
from service.errors import InputTooLargeError, InvalidInputError, SwinxsegError
from service.volume import Volume

logger = logging.getLogger(__name__)


@contextmanager
def library_errors(what: str, error: type[InvalidInputError] = InvalidInputError) -> Iterator[None]:
    """Turn any exception a third-party library raises into ``error`` with a readable message.

    Our own typed errors and MemoryError pass through unchanged (running out of memory is not
    the input's fault)."""
    try:
        yield
    except (SwinxsegError, MemoryError):
        raise
    except Exception as exc:
        raise error(f"{what}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """One readable line from an exception; ITK messages start with C++ source locations."""
    text = str(exc).strip() or type(exc).__name__
    if "File cannot be read" in text:
        # ITK's generic failure; its "Reason:" is a stale errno (often "No such file").
        return "ITK could not parse the file"
    if "ERROR:" in text:
        text = text.rsplit("ERROR:", 1)[1]
        text = _ITK_OBJECT_PREFIX.sub("", text.strip())
    if "[nrrd]" in text:  # teem chains every caller; the last link is the actual problem
        text = _NRRD_FUNCTION_PREFIX.sub("", text.rsplit("[nrrd]", 1)[1].strip())
    return " ".join(text.split())[:300]


_ITK_OBJECT_PREFIX = re.compile(r"^\w+\(0x[0-9a-fA-F]+\):\s*")
_NRRD_FUNCTION_PREFIX = re.compile(r"^_?nrrd\w*:\s*")


def effective_shape(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    """The 3D shape of an image, dropping trailing singleton dimensions beyond the third;
    refuses 2D, real 4D+ and degenerate shapes."""
    dims = [int(s) for s in shape]
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    shape_text = "x".join(str(d) for d in shape)
    if len(dims) > 3:
        raise InvalidInputError(f"{name} is {len(dims)}D (shape {shape_text}); send a single 3D volume")
    if len(dims) < 3:
        raise InvalidInputError(f"{name} is {len(dims)}D (shape {shape_text}); a 3D volume is needed")
    if min(dims) < 1:
        raise InvalidInputError(f"{name} has an empty dimension (shape {shape_text})")
    if dims.count(1) == 1:
        raise InvalidInputError(f"{name} is 2D: a single slice (shape {shape_text}); a 3D volume is needed")
    if min(dims) < 2:
        raise InvalidInputError(
            f"{name} has fewer than 2 voxels along {dims.count(1)} axes (shape {shape_text}); "
            "a 3D volume is needed"
        )
    return dims[0], dims[1], dims[2]


def check_voxel_limit(shape: Sequence[int], max_voxels: int, name: str) -> None:
    """Refuse from the header, before any voxel is read or allocated."""
    count = math.prod(int(s) for s in shape)
    if count > max_voxels:
        shape_text = "x".join(str(int(s)) for s in shape)
        raise InputTooLargeError(
            f"{name} is too large: shape {shape_text} = {count:,} voxels, the limit is {max_voxels:,}"
        )


def check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind not in "iuf":
        raise InvalidInputError(
            f"{name} has voxel type {dtype}; a CT volume needs integer or floating-point voxels"
        )


def check_affine(affine: np.ndarray, name: str) -> None:
    """The voxel-to-world map must be finite and invertible (no zero spacing, no collapsed axes)."""
    if not np.all(np.isfinite(affine)):
        raise InvalidInputError(f"{name} has a non-finite voxel-to-world affine:\n{np.array2string(affine)}")
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 1e-9):
        raise InvalidInputError(
            f"{name} has zero voxel spacing {tuple(round(float(s), 6) for s in spacing)} mm: "
            "the voxel-to-world affine is not invertible"
        )
    # |det| / prod(norms) is 1 for orthogonal axes and 0 for collapsed (parallel) ones.
    if abs(np.linalg.det(linear)) / float(np.prod(spacing)) < 1e-6:
        raise InvalidInputError(
            f"{name} has a degenerate (non-invertible) voxel-to-world affine:\n{np.array2string(affine)}"
        )


def finish_volume(
    array: np.ndarray, affine: np.ndarray, name: str, source_format: str, warnings: Sequence[CaseWarning] = ()
) -> Volume:
    """Final checks on the voxels, then wrap them in a Volume carrying ``warnings``."""
    check_dtype(array.dtype, name)
    if array.dtype.kind == "f":
        bad = _count_non_finite(array)
        if bad:
            raise InvalidInputError(
                f"{name} has {bad:,} NaN or infinite voxels out of {array.size:,}; a CT volume needs finite values"
            )
    warnings = list(warnings)
    lo, hi = array.min(), array.max()
    if lo == hi:
        warnings.append(
            CaseWarning(CONSTANT_INTENSITY, f"{name}: every voxel has the same value {lo}; the mask will be empty")
        )
    for warning in warnings:
        logger.warning("%s", warning.message)
    meta = {"source_format": source_format, "file_name": name, "warnings": tuple(warnings)}
    return Volume(array=array, affine=affine, meta=meta)


def _count_non_finite(array: np.ndarray) -> int:
    """NaN/Inf count, one slab at a time so the boolean temporary stays small."""
    bad = 0
    for k in range(0, array.shape[-1], 16):
        bad += int(np.count_nonzero(~np.isfinite(array[..., k : k + 16])))
    return bad
