"""One DICOM series, from a folder or a zip, as one volume or a refusal that says why.

Slice headers are read with SimpleITK (GDCM); files without an image are skipped with a warning.
The series must be one reconstruction (:mod:`service.io.dicom_checks`) on one grid: same size,
orientation and pixel spacing, no gantry tilt, no duplicate or missing slices, uniform
positions. The slices are ordered along the slice normal, read with SimpleITK's
ImageSeriesReader (rescale slope/intercept applied: HU), and SimpleITK's placement is checked
against the positions. A zip is unpacked into a private temporary folder within the limits of
:mod:`service.io.archive_limits` and an unpacked-size cap.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.case_warnings import DICOM_FILES_SKIPPED, NON_CT_MODALITY, CaseWarning
from service.errors import DicomSeriesError, InputTooLargeError, InvalidInputError
from service.io import dicom_checks, dicom_headers
from service.io.archive_limits import check_zip_directory
from service.io.formats import looks_like_dicom
from service.io.sitk_reader import simpleitk, volume_from_sitk
from service.io.volume_checks import check_voxel_limit, library_errors
from service.volume import Volume

if TYPE_CHECKING:
    import SimpleITK as sitk

logger = logging.getLogger(__name__)

# Geometry tolerances for DICOM series.
_SPACING_ABS_TOL_MM = 1e-3  # slices closer than this (or 1 % of the typical gap) are duplicates
_MISSING_SLICE_FACTOR = 1.5  # a gap this many typical gaps long means slices are missing
_TILT_TOL_PIXELS = 0.05  # in-plane drift of the slice origins allowed, in pixels
_COSINE_TOL = 1e-4  # ImageOrientationPatient values that differ less are the same orientation

# Zip extraction cap (bytes): generous for a series at the voxel limit (2 bytes/voxel + headers),
# but stops a zip bomb before it fills the disk.
_ZIP_BYTES_PER_VOXEL = 4
_ZIP_EXTRA_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class _Slice:
    """What we need from one DICOM file's header (positions in LPS mm)."""

    path: Path
    position: np.ndarray
    row_cosine: np.ndarray
    col_cosine: np.ndarray
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing), from the tags
    reconstruction: tuple[str, ...]  # see dicom_checks.RECONSTRUCTION_TAGS
    instance: tuple[str, str]  # (AcquisitionNumber, InstanceNumber)
    rescale: tuple[str, str]
    modality: str
    spacing_warning: CaseWarning | None = None


def _dicom_files(folder: Path) -> list[Path]:
    """DICOM files under ``folder`` (recursively, hidden entries and macOS zip debris skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for file_name in sorted(files):
            path = Path(root) / file_name
            if not file_name.startswith(".") and path.is_file() and looks_like_dicom(path):
                found.append(path)
    return found


def folder_has_dicom(folder: Path) -> bool:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for file_name in sorted(files):
            if not file_name.startswith(".") and looks_like_dicom(Path(root) / file_name):
                return True
    return False


def read_dicom_zip(path: Path, name: str, max_voxels: int, *, work_dir: Path | None, max_members: int) -> Volume:
    """Extract the zip (at most ``max_members`` entries) into a temp folder in ``work_dir`` (always
    removed) and read the series in it."""
    with tempfile.TemporaryDirectory(prefix="swinxseg-dicom-", dir=work_dir) as tmp:
        folder = Path(tmp)
        _extract_zip(path, folder, name, max_voxels, max_members)
        volume = read_dicom_folder(folder, name, max_voxels, in_zip=True)
        # The voxels are already in memory (GetArrayFromImage copies), so removing the files is safe.
        return volume


def _extract_zip(path: Path, folder: Path, name: str, max_voxels: int, max_members: int) -> None:
    byte_limit = max_voxels * _ZIP_BYTES_PER_VOXEL + _ZIP_EXTRA_BYTES
    check_zip_directory(path, name, max_members)  # before zipfile parses the whole directory
    with library_errors(f"{name} is not a valid zip archive"):
        archive = zipfile.ZipFile(path)
    with archive:
        if len(archive.infolist()) > max_members:  # the end record may understate the count
            raise InputTooLargeError(
                f"{name} holds {len(archive.infolist()):,} entries, more than the {max_members:,} allowed "
                "(max_zip_members)"
            )
        members = [m for m in archive.infolist() if not m.is_dir() and not _hidden_member(m.filename)]
        if any(m.flag_bits & 0x1 for m in members):
            raise InvalidInputError(f"{name} is an encrypted zip; send it without a password")
        total = sum(m.file_size for m in members)
        if total > byte_limit:
            raise InputTooLargeError(
                f"{name} unpacks to {total:,} bytes, more than the {byte_limit:,} allowed for "
                f"{max_voxels:,} voxels"
            )
        with library_errors(f"{name} is truncated or corrupt"):
            for member in members:
                # ZipFile.extract strips absolute paths and "..", so nothing lands outside folder.
                archive.extract(member, folder)


def _hidden_member(member_name: str) -> bool:
    parts = Path(member_name).parts
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def read_dicom_folder(folder: Path, name: str, max_voxels: int, *, in_zip: bool = False) -> Volume:
    """One DICOM series: headers checked and ordered along the slice normal, then read with
    SimpleITK's ImageSeriesReader (which applies rescale slope/intercept, giving HU)."""
    where = "the zip" if in_zip else "the folder"
    files = _dicom_files(folder)
    if not files:
        raise DicomSeriesError(f"{name}: no DICOM files found in {where}{_listing_hint(folder)}")
    slices, warnings = _read_slice_headers(files, folder, name)
    ordered = _check_and_order_series(slices, folder, name)
    rows, cols = ordered[0].rows, ordered[0].cols
    check_voxel_limit((cols, rows, len(ordered)), max_voxels, name)
    image = _read_series_pixels(ordered, name)
    # GDCM assumes 1 mm when PixelSpacing is missing; the spacing we read from the tags counts.
    row_spacing, col_spacing = ordered[0].pixel_spacing
    image.SetSpacing((col_spacing, row_spacing, *image.GetSpacing()[2:]))
    warnings += _series_warnings(ordered, name)
    volume = volume_from_sitk(image, name=name, source_format="dicom", warnings=warnings)
    _check_series_geometry(volume, ordered, name)
    volume.meta[dicom_headers.META_KEY] = dicom_headers.read_headers([s.path for s in ordered], name)
    return volume


def _series_warnings(ordered: list[_Slice], name: str) -> list[CaseWarning]:
    warnings = [ordered[0].spacing_warning] if ordered[0].spacing_warning else []
    modality = ordered[0].modality
    if modality and modality != "CT":
        warnings.append(CaseWarning(
            NON_CT_MODALITY,
            f"{name}: DICOM Modality is {modality}, not CT; the model expects CT in Hounsfield units",
        ))
    return warnings


def _listing_hint(folder: Path) -> str:
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())[:3]
    return f" (it holds: {', '.join(names)})" if names else " (it is empty)"


def _read_slice_headers(files: list[Path], folder: Path, name: str) -> tuple[list[_Slice], list[CaseWarning]]:
    """Read each file's header; files that are not images (reports, DICOMDIR...) are skipped,
    with a warning."""
    sitk = simpleitk()
    slices, skipped = [], []
    for path in files:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(path))
        reader.LoadPrivateTagsOff()
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            skipped.append(path)
            continue
        slices.append(_slice_from_reader(reader, path, folder, name))
    if not slices:
        raise DicomSeriesError(f"{name}: none of the {len(files)} DICOM files holds a readable image")
    warnings = []
    if skipped:
        warnings.append(CaseWarning(
            DICOM_FILES_SKIPPED,
            f"{name}: skipped {len(skipped)} DICOM files without a readable image "
            f"(e.g. {skipped[0].relative_to(folder)})",
        ))
    return slices, warnings


def _slice_from_reader(reader: sitk.ImageFileReader, path: Path, folder: Path, name: str) -> _Slice:
    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

    rel = path.relative_to(folder)
    size = reader.GetSize()
    if len(size) > 2 and size[2] > 1:
        # Enhanced/multi-frame objects keep per-frame positions in functional groups, which
        # this reader does not interpret.
        raise DicomSeriesError(
            f"{name}: {rel} is a multi-frame DICOM file ({size[2]} frames); "
            "only series of single-slice files are supported"
        )
    position = _decimal_values(tag("0020|0032"), 3, f"{name}: {rel} ImagePositionPatient (0020,0032)")
    orientation = _decimal_values(tag("0020|0037"), 6, f"{name}: {rel} ImageOrientationPatient (0020,0037)")
    spacing, spacing_warning = dicom_checks.pixel_spacing(tag, str(rel), name)
    return _Slice(
        path=path,
        position=position,
        row_cosine=orientation[:3],
        col_cosine=orientation[3:],
        rows=int(size[1]),
        cols=int(size[0]),
        pixel_spacing=spacing,
        reconstruction=dicom_checks.reconstruction_key(tag),
        instance=(tag("0020|0012"), tag("0020|0013")),
        rescale=(tag("0028|1053") or "1", tag("0028|1052") or "0"),
        modality=tag("0008|0060"),
        spacing_warning=spacing_warning,
    )


def _decimal_values(text: str, count: int, what: str) -> np.ndarray:
    """Parse a DICOM multi-valued decimal string ``a\\b\\c``."""
    if not text:
        raise DicomSeriesError(f"{what} is missing; the slices cannot be placed in space")
    try:
        values = np.array([float(v) for v in text.split("\\")], dtype=np.float64)
    except ValueError as exc:
        raise DicomSeriesError(f"{what} is not a list of numbers: {text!r}") from exc
    if values.size != count or not np.all(np.isfinite(values)):
        raise DicomSeriesError(f"{what} should hold {count} finite numbers, got {text!r}")
    return values


def _check_and_order_series(slices: list[_Slice], folder: Path, name: str) -> list[_Slice]:
    """Refuse what would give a wrong volume; return the slices sorted along the slice normal."""
    dicom_checks.check_one_reconstruction([s.reconstruction for s in slices], name)
    dicom_checks.check_unique_instances([s.instance for s in slices], name)
    if len(slices) < 2:
        raise DicomSeriesError(
            f"{name} holds a single slice ({slices[0].path.relative_to(folder)}), not a 3D series; "
            "a series needs at least 2 slices"
        )
    _check_same_grid(slices, folder, name)
    normal = np.cross(slices[0].row_cosine, slices[0].col_cosine)
    normal /= np.linalg.norm(normal)
    heights = np.array([s.position @ normal for s in slices])
    order = np.argsort(heights, kind="stable")
    ordered = [slices[i] for i in order]
    heights = heights[order]
    _check_no_tilt(ordered, normal, name)
    _check_gaps(ordered, heights, folder, name)
    return ordered


def _check_same_grid(slices: list[_Slice], folder: Path, name: str) -> None:
    sizes = Counter((s.cols, s.rows) for s in slices)
    if len(sizes) > 1:
        listing = ", ".join(f"{c}x{r} ({n} slices)" for (c, r), n in sizes.most_common())
        raise DicomSeriesError(f"{name}: mixed slice sizes in one series: {listing}")
    first = slices[0]
    for s in slices[1:]:
        if not (
            np.allclose(s.row_cosine, first.row_cosine, atol=_COSINE_TOL)
            and np.allclose(s.col_cosine, first.col_cosine, atol=_COSINE_TOL)
        ):
            raise DicomSeriesError(
                f"{name}: mixed slice orientations in one series: {first.path.relative_to(folder)} has "
                f"ImageOrientationPatient {_fmt(np.r_[first.row_cosine, first.col_cosine])}, "
                f"{s.path.relative_to(folder)} has {_fmt(np.r_[s.row_cosine, s.col_cosine])}"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise DicomSeriesError(
                f"{name}: mixed pixel spacing in one series: {first.pixel_spacing} mm in "
                f"{first.path.relative_to(folder)}, {s.pixel_spacing} mm in {s.path.relative_to(folder)}"
            )


def _check_no_tilt(ordered: list[_Slice], normal: np.ndarray, name: str) -> None:
    """Slice origins must line up along the normal; a tilted gantry shears the volume."""
    offsets = np.array([s.position - ordered[0].position for s in ordered])
    along = offsets @ normal
    in_plane = offsets - np.outer(along, normal)
    drift = np.linalg.norm(in_plane, axis=1)
    tolerance = _TILT_TOL_PIXELS * min(ordered[0].pixel_spacing)
    if drift.max() > tolerance:
        angle = math.degrees(math.atan2(float(drift[-1]), float(along[-1]))) if along[-1] > 0 else 90.0
        raise DicomSeriesError(
            f"{name}: gantry tilt or sheared series: slice positions drift {drift.max():.3f} mm sideways "
            f"from the slice normal (about {angle:.2f} degrees); resample it to an untilted grid first"
        )


def _check_gaps(ordered: list[_Slice], heights: np.ndarray, folder: Path, name: str) -> None:
    """Duplicate, missing and unevenly spaced slices (positions along the normal, mm)."""
    gaps = np.diff(heights)
    typical = float(np.median(gaps))
    duplicates = np.flatnonzero(gaps <= max(_SPACING_ABS_TOL_MM, 0.01 * typical))
    if duplicates.size:
        i = int(duplicates[0])
        raise DicomSeriesError(
            f"{name}: {duplicates.size} pairs of slices share a position (e.g. "
            f"{ordered[i].path.relative_to(folder)} and {ordered[i + 1].path.relative_to(folder)} "
            f"at z={heights[i]:.2f} mm); is more than one series in the folder?"
        )
    missing = np.flatnonzero(gaps > _MISSING_SLICE_FACTOR * typical)
    if missing.size:
        details = "; ".join(
            f"{gaps[i]:.2f} mm gap between z={heights[i]:.2f} and z={heights[i + 1]:.2f} mm "
            f"(after slice {i + 1}, about {round(gaps[i] / typical) - 1} missing)"
            for i in missing[:3]
        )
        raise DicomSeriesError(
            f"{name}: missing slices: {details}; the other slices are {typical:.2f} mm apart"
        )
    dicom_checks.check_uniform_positions(heights, name)


def _read_series_pixels(ordered: list[_Slice], name: str) -> sitk.Image:
    sitk = simpleitk()
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(s.path) for s in ordered])
    reader.MetaDataDictionaryArrayUpdateOff()
    reader.LoadPrivateTagsOff()
    if len({s.rescale for s in ordered}) > 1:
        # The output pixel type follows the first slice; with per-slice rescaling an integer
        # type could truncate other slices' HU values, so read as float.
        logger.info("%s: rescale slope/intercept differ between slices; reading as float32", name)
        reader.SetOutputPixelType(sitk.sitkFloat32)
    with library_errors(f"{name}: the DICOM pixel data could not be read", DicomSeriesError):
        return reader.Execute()


def _check_series_geometry(volume: Volume, ordered: list[_Slice], name: str) -> None:
    """SimpleITK derives the grid itself; make sure it agrees with the positions we checked."""
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    first = lps_to_ras * ordered[0].position
    last = lps_to_ras * ordered[-1].position
    k_last = len(ordered) - 1
    predicted = volume.affine[:3, :3] @ np.array([0.0, 0.0, k_last]) + volume.affine[:3, 3]
    if not (np.allclose(volume.affine[:3, 3], first, atol=1e-3) and np.allclose(predicted, last, atol=1e-2)):
        raise DicomSeriesError(
            f"{name}: SimpleITK placed the series at {_fmt(volume.affine[:3, 3])}..{_fmt(predicted)} mm "
            f"but the slice positions say {_fmt(first)}..{_fmt(last)} mm (RAS)"
        )


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"
