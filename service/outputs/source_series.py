"""The CT series an RTSTRUCT or SEG refers to, checked before anything is written.

A DICOM output names each slice by SOP Instance UID and joins the CT's study and Frame of
Reference; if any of those is blank or repeated, a planning system would attach the contours to
the wrong image or to none, so the output is refused instead (``DicomSeriesError``, HTTP 422).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.errors import DicomSeriesError, InvalidInputError
from service.io.dicom_headers import headers_of
from service.volume import Volume

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

_AXIS_TOL = 1e-4  # a direction cosine this close to 0 or +-1 counts as axis-aligned
_UIDS = (("StudyInstanceUID", "Study Instance UID"), ("SeriesInstanceUID", "Series Instance UID"),
         ("FrameOfReferenceUID", "Frame of Reference UID"))


@dataclass(frozen=True)
class SourceSeries:
    """The slices in k order (``volume.array[:, :, k]``) and their geometry (LPS mm).

    ``row_cosine``: direction of increasing column index i; ``col_cosine``: of increasing row
    index j; ``pixel_spacing``: (row spacing, column spacing) mm; ``positions``: (K, 3)
    ImagePositionPatient of each slice.
    """

    headers: tuple[Dataset, ...]
    sop_instance_uids: tuple[str, ...]
    sop_class_uid: str
    positions: np.ndarray
    row_cosine: np.ndarray
    col_cosine: np.ndarray
    pixel_spacing: tuple[float, float]

    @property
    def first(self) -> Dataset:
        return self.headers[0]


def source_series(volume: Volume, output: str, *, axial_only: bool = False) -> SourceSeries:
    """The series ``volume`` was read from, fit to be referenced by ``output`` ("rtstruct", "seg").

    Raises:
        InvalidInputError: the input was not a DICOM series (no series to refer to).
        DicomSeriesError: blank or duplicate SOP Instance UIDs; blank Study, Series or Frame of
            Reference UID; with ``axial_only``, an oblique series.
    """
    name = volume.meta.get("file_name", "input")
    headers = headers_of(volume)
    if not headers:
        raise InvalidInputError(
            f"{output} output needs a DICOM series input (a folder or zip of CT slices); {name} is "
            f"{volume.meta.get('source_format', 'not DICOM')}, and no series is invented for it"
        )
    if len(headers) != volume.shape[2]:
        raise DicomSeriesError(f"{name}: {len(headers)} slice headers for {volume.shape[2]} slices")
    _check_uids(headers, name, output)
    first = headers[0]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
    series = SourceSeries(
        headers=headers,
        sop_instance_uids=tuple(str(h.SOPInstanceUID) for h in headers),
        sop_class_uid=str(first.SOPClassUID),
        positions=np.array([[float(v) for v in h.ImagePositionPatient] for h in headers], dtype=np.float64),
        row_cosine=orientation[:3],
        col_cosine=orientation[3:],
        pixel_spacing=(float(first.PixelSpacing[0]), float(first.PixelSpacing[1])),
    )
    _check_matches_volume(series, volume, name)
    if axial_only:
        _check_axis_aligned(series, name, output)
    return series


def _check_matches_volume(series: SourceSeries, volume: Volume, name: str) -> None:
    """The headers must place every slice where the volume's affine does (they are the same files
    in the same order); a mismatch is a bug we refuse to write into a file."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ volume.affine[:3, :]
    row_spacing, col_spacing = series.pixel_spacing
    ks = np.arange(volume.shape[2])
    placed = (lps[:, 2][None, :] * ks[:, None]) + lps[:, 3][None, :]
    steps_ok = np.allclose(lps[:, 0], col_spacing * series.row_cosine, atol=1e-4) and np.allclose(
        lps[:, 1], row_spacing * series.col_cosine, atol=1e-4)
    offset = float(np.abs(placed - series.positions).max())
    if not steps_ok or offset > 0.05:
        raise DicomSeriesError(
            f"{name}: the slice headers and the volume's geometry disagree (by {offset:.3f} mm); "
            "no DICOM output is written for it"
        )


def _check_uids(headers: tuple[Dataset, ...], name: str, output: str) -> None:
    uids = [str(h.get("SOPInstanceUID", "") or "").strip() for h in headers]
    blank = sum(not uid for uid in uids)
    if blank:
        raise DicomSeriesError(
            f"{name}: {blank} of {len(uids)} slices have a blank SOP Instance UID; {output} output must name "
            "the CT slice each contour lies on, so it is refused for this series (re-export it from the PACS "
            "or scanner with its UIDs)"
        )
    if len(set(uids)) != len(uids):
        repeated = next(uid for uid in uids if uids.count(uid) > 1)
        raise DicomSeriesError(
            f"{name}: SOP Instance UID {repeated} is shared by several slices; {output} output cannot tell "
            "them apart, so it is refused"
        )
    for keyword, label in _UIDS:
        values = {str(h.get(keyword, "") or "").strip() for h in headers}
        if "" in values:
            raise DicomSeriesError(f"{name}: the {label} is blank; {output} output must refer to it")
        if len(values) > 1:
            raise DicomSeriesError(f"{name}: the slices carry {len(values)} different {label}s")
    if not str(headers[0].get("SOPClassUID", "") or "").strip():
        raise DicomSeriesError(f"{name}: the SOP Class UID is blank; {output} output must refer to it")


def _check_axis_aligned(series: SourceSeries, name: str, output: str) -> None:
    cosines = np.abs(np.r_[series.row_cosine, series.col_cosine])
    if not np.all((cosines < _AXIS_TOL) | (np.abs(cosines - 1.0) < _AXIS_TOL)):
        values = "\\".join(f"{v:.4g}" for v in np.r_[series.row_cosine, series.col_cosine])
        raise DicomSeriesError(
            f"{name}: the series is oblique (ImageOrientationPatient {values}); {output} output is only "
            "written for axis-aligned series, where every planning system places contours the same way"
        )
