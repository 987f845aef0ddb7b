"""CT series for the PACS tests: copies of the real series with fresh UIDs (tests/dicom_variants.py),
re-labelled into one study as localizer / thick / thin series."""

from __future__ import annotations

from pathlib import Path

import pydicom
from dicom_variants import write_variant
from pydicom.uid import generate_uid

FULL = (slice(None), slice(None))


def ct_series(folder: Path, slices, *, crop=None) -> Path:
    """The slices as one CT series with fresh Study/Series/SOP/Frame of Reference UIDs."""
    return write_variant(folder, slices, "head_first_supine", **({"crop": crop} if crop else {}))


def relabel(folder: Path, *, study_uid: str, series_number: int, thickness_mm: float | None = None,
            image_type: tuple[str, ...] | None = None, description: str = "") -> str:
    """Move a written series into ``study_uid`` as a new series (fresh Series/SOP UIDs); optionally
    a new slice thickness (positions re-spaced to it) or Image Type. Returns the Series UID."""
    series_uid = generate_uid()
    paths = sorted(folder.iterdir())
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesNumber, ds.SeriesDescription = series_number, description
        if thickness_mm is not None:
            position = [float(v) for v in ds.ImagePositionPatient]
            first = float(pydicom.dcmread(paths[0], stop_before_pixels=True).ImagePositionPatient[2])
            position[2] = first + k * thickness_mm
            ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
            ds.SliceThickness = thickness_mm
        if image_type is not None:
            ds.ImageType = list(image_type)
        ds.save_as(path, enforce_file_format=True)
    return series_uid
