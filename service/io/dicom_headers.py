"""The source series' own headers, kept with the volume for outputs that reference it.

RTSTRUCT and DICOM SEG must name each CT slice by its SOP Instance UID, lie on its position and
copy the patient and study modules. Those come from the very files the voxels were read from,
read once here with pydicom (pixel data skipped) in the slices' k order, because a zip's files
are gone after the read and re-reading a folder later could see different files. GDCM (which
reads the pixels) does not hand out DICOM datasets that highdicom can take.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import DicomSeriesError
from service.volume import Volume

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

META_KEY = "dicom_headers"


def read_headers(paths: Sequence[Path], name: str) -> tuple[Dataset, ...]:
    """One header-only pydicom dataset per path, in the given (k) order.

    Raises:
        DicomSeriesError: a file that GDCM read but pydicom cannot parse.
    """
    import pydicom  # imported on first use: only DICOM inputs pay for it

    headers = []
    for path in paths:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as exc:  # pydicom raises several types for a broken header
            raise DicomSeriesError(f"{name}: the header of {path.name} cannot be parsed: {exc}") from None
    return tuple(headers)


def headers_of(volume: Volume) -> tuple[Dataset, ...] | None:
    """The source slices' headers in k order (``volume.array[:, :, k]``), or None for a non-DICOM input."""
    return volume.meta.get(META_KEY)
