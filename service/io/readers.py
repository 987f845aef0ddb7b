"""Read CT volumes from files, folders and uploaded bytes into a :class:`~service.volume.Volume`.

Formats: NIfTI-1/2 (``.nii``, ``.nii.gz``, via nibabel), NRRD (``.nrrd``, ``.nhdr``) and
MetaImage (``.mha``, ``.mhd``) via SimpleITK, a DICOM series folder, and a ``.zip`` holding one
DICOM series. Every reader returns the affine in RAS+ mm (see docs/ARCHITECTURE.md) and checks
the input before it is used: size limits are enforced from the header, before any voxel data is
read, and every library exception is turned into one of the typed errors of
:mod:`service.errors` with the file name in the message.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import nibabel as nib
import numpy as np

from service.case_warnings import (
    CONSTANT_INTENSITY,
    DICOM_FILES_SKIPPED,
    NON_CT_MODALITY,
    CaseWarning,
)
from service.errors import (
    DicomSeriesError,
    InputTooLargeError,
    InvalidInputError,
    SwinxsegError,
    UnsupportedFormatError,
)
from service.io import dicom_checks
from service.io.archive_limits import check_zip_directory
from service.io.external_data import check_external_data
from service.io.nifti_header import nifti_geometry
from service.volume import Volume

if TYPE_CHECKING:
    import SimpleITK as sitk


def _simpleitk():
    """SimpleITK, imported on first use: NIfTI is read by nibabel, and the import costs ~90 MB of
    resident memory that a NIfTI-only batch or server process never needs."""
    import SimpleITK

    return SimpleITK

logger = logging.getLogger(__name__)

DEFAULT_MAX_VOXELS = 800_000_000
#: Entries a DICOM zip may hold (each costs a file and a header parse); see Settings.max_zip_members.
DEFAULT_MAX_ZIP_MEMBERS = 20_000

#: File suffixes (lower case) of the single-file formats; ``.zip`` holds a DICOM series.
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
ZIP_SUFFIX = ".zip"
# Suffixes that mark a file as DICOM when it lacks the "DICM" preamble marker.
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_FLARE_CHANNEL = re.compile(r"_0000$")

# How many leading bytes to look at when sniffing; enough compressed bytes to inflate a
# NIfTI-2 header (540 bytes) even from a poorly compressed gzip stream.
_SNIFF_BYTES = 64 * 1024
_NIFTI_HEADER_BYTES = 544

# Geometry tolerances for DICOM series.
_SPACING_ABS_TOL_MM = 1e-3  # slices closer than this (or 1 % of the typical gap) are duplicates
_MISSING_SLICE_FACTOR = 1.5  # a gap this many typical gaps long means slices are missing
_TILT_TOL_PIXELS = 0.05  # in-plane drift of the slice origins allowed, in pixels
_COSINE_TOL = 1e-4  # ImageOrientationPatient values that differ less are the same orientation

# Zip extraction cap (bytes): generous for a series at the voxel limit (2 bytes/voxel + headers),
# but stops a zip bomb before it fills the disk.
_ZIP_BYTES_PER_VOXEL = 4
_ZIP_EXTRA_BYTES = 512 * 1024**2

_FORMAT_LABELS = {
    "nifti": "NIfTI",
    "nrrd": "NRRD",
    "metaimage": "MetaImage",
    "zip": "zip",
    "dicom": "DICOM",
}
_SUPPORTED_TEXT = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha), a DICOM series folder or a .zip of one"
)


# --------------------------------------------------------------------------- public API


def read_volume(
    path: Path,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    work_dir: Path | None = None,
    max_zip_members: int = DEFAULT_MAX_ZIP_MEMBERS,
) -> Volume:
    """Read a CT volume from a file or a DICOM series folder.

    Args:
        path: a NIfTI/NRRD/MetaImage file, a ``.zip`` of one DICOM series, or a folder holding
            one DICOM series.
        max_voxels: refuse volumes with more voxels than this (checked from the header).
        work_dir: where a zip is extracted (default: the system temp folder).
        max_zip_members: refuse a zip with more entries than this.

    A MetaImage/NRRD header may name a separate data file only inside the file's own folder
    (see :mod:`service.io.external_data`).

    Returns:
        The volume: array in the file's own voxel order (dtype kept, integer or float),
        affine mapping voxel indices to RAS+ world mm.

    Raises:
        InvalidInputError (or its subclasses UnsupportedFormatError, InputTooLargeError,
        DicomSeriesError) naming the file and the problem.
    """
    path = Path(path)
    name = path.name or str(path)
    if path.is_dir():
        return _read_dicom_folder(path, name, max_voxels)
    if not path.is_file():
        raise InvalidInputError(f"{name}: no such file or folder (or not a regular file)")
    with _library_errors(f"{name} could not be opened"):
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    fmt = _detect_format(head, name)
    options = _ReadOptions(data_dir=path.parent, work_dir=work_dir, max_zip_members=max_zip_members)
    return _read_by_format(path, fmt, name, max_voxels, options)


def read_volume_upload(
    path: Path,
    *,
    filename: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    work_dir: Path | None = None,
    max_zip_members: int = DEFAULT_MAX_ZIP_MEMBERS,
) -> Volume:
    """Read an uploaded file already spooled to ``path`` (its name says nothing; ``filename``
    is the client's). The format is sniffed from the bytes, the suffix of ``filename`` is the
    fallback. An upload is read only from its own bytes: a header naming another data file is
    refused (415). ``path`` is left in place; a suffixed hard link (or copy) is made next to it for
    the libraries that pick a reader by suffix, and removed.

    Raises:
        InvalidInputError and its subclasses, as :func:`read_volume`.
    """
    name = Path(filename).name if filename else "uploaded data"
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    fmt = _detect_format(head, name)
    options = _ReadOptions(data_dir=None, work_dir=work_dir, max_zip_members=max_zip_members)
    with _suffixed(Path(path), _TEMP_SUFFIX[fmt]) as tmp:
        try:
            return _read_by_format(tmp, fmt, name, max_voxels, options)
        except SwinxsegError as exc:
            # Library messages may mention the temp path; people only know the upload's name.
            message = str(exc).replace(str(tmp), name)
            if message == str(exc):
                raise
            raise type(exc)(message, code=exc.code) from exc


def check_upload_header(path: Path, *, filename: str | None = None) -> str:
    """The cheap part of reading an upload, without decoding it: the format from its leading
    bytes (or ``filename``'s suffix) and, for MetaImage/NRRD, that the data is inline. For a
    job, so that such an upload is refused at submission rather than when its turn comes.

    Returns the format (``nifti``, ``nifti_gz``, ``nrrd``, ``metaimage``, ``zip``).
    Raises InvalidInputError and its subclasses, as :func:`read_volume_upload`.
    """
    name = Path(filename).name if filename else "uploaded data"
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    fmt = _detect_format(head, name)
    check_external_data(Path(path), fmt, name, allowed_dir=None)
    return fmt


def read_volume_bytes(
    data: bytes,
    *,
    filename: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    work_dir: Path | None = None,
) -> Volume:
    """Read a CT volume from the bytes of an uploaded file.

    The format is sniffed from the magic bytes first and only falls back to ``filename``'s
    suffix when the bytes carry no recognisable signature. The bytes go to a private temporary
    file (mode 0600, in ``work_dir`` or the system temp folder) for the libraries that need a
    path; it is always removed.

    Args:
        data: the whole file.
        filename: the client's file name, used for messages and the suffix fallback.
        max_voxels: refuse volumes with more voxels than this (checked from the header).
        work_dir: where the temporary file goes (default: the system temp folder).
    """
    name = Path(filename).name if filename else "uploaded data"
    _detect_format(bytes(data[:_SNIFF_BYTES]), name)  # refuse garbage before writing it anywhere
    with _temporary_copy(data, ".bin", work_dir) as tmp:
        return read_volume_upload(tmp, filename=filename, max_voxels=max_voxels, work_dir=work_dir)


def case_name_for(path: Path) -> str:
    """The case id of an input: the file name without its volume suffix and without FLARE's
    ``_0000`` channel tag (``CASE_0000.nii.gz`` -> ``CASE``), a DICOM folder's name, a zip's stem."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        return name
    lower = name.lower()
    for suffix in (*VOLUME_SUFFIXES, ZIP_SUFFIX):
        if lower.endswith(suffix) and len(name) > len(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        stem = path.stem or name
    return _FLARE_CHANNEL.sub("", stem) or stem


def find_cases(input_dir: Path) -> list[Path]:
    """The cases in a batch input folder, sorted by name.

    A case is a volume file with a supported suffix, a ``.zip`` file, or a subfolder holding
    DICOM files (searched recursively). Hidden entries (names starting with ``.``) are ignored.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InvalidInputError(f"input folder {input_dir} does not exist or is not a folder")
    cases = []
    for entry in sorted(input_dir.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and _has_case_suffix(entry):
            cases.append(entry)
        elif entry.is_dir() and _folder_has_dicom(entry):
            cases.append(entry)
    return cases


# --------------------------------------------------------------------------- format sniffing

_TEMP_SUFFIX = {"nifti": ".nii", "nifti_gz": ".nii.gz", "nrrd": ".nrrd", "metaimage": ".mha", "zip": ".zip"}
_METAIMAGE_KEY = re.compile(rb"^\s*(ObjectType|NDims|ObjectSubType|DimSize)\s*=", re.MULTILINE)


def _detect_format(head: bytes, name: str) -> str:
    """Decide the format from the leading bytes, falling back to the name's suffix.

    Returns one of ``nifti``, ``nifti_gz``, ``nrrd``, ``metaimage``, ``zip``; a single DICOM
    file and anything unrecognised raise.
    """
    if not head:
        raise InvalidInputError(f"{name} is empty (0 bytes)")
    fmt = _sniff_magic(head, name)
    suffix = _suffix(name)
    if fmt is None:
        fmt = _format_from_suffix(suffix, head, name)
    elif suffix and _format_from_suffix_or_none(suffix) not in (None, fmt.removesuffix("_gz")):
        logger.info("%s: content is %s although the name says %s; reading it as %s", name, fmt, suffix, fmt)
    if fmt == "dicom":
        raise DicomSeriesError(
            f"{name} is a single DICOM file (a single slice), not a 3D volume; "
            "send the whole series as a folder or a .zip"
        )
    return fmt


def _sniff_magic(head: bytes, name: str) -> str | None:
    if head[:2] == b"\x1f\x8b":
        return _sniff_gzip(head, name)
    nifti = _nifti_kind(head)
    if nifti == "pair":
        raise UnsupportedFormatError(
            f"{name} is the header of a NIfTI .hdr/.img pair; send a single-file .nii or .nii.gz"
        )
    if nifti is not None:
        return "nifti"
    if head.startswith(b"NRRD"):
        return "nrrd"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if _METAIMAGE_KEY.search(head[:4096]):
        return "metaimage"
    return None


def _sniff_gzip(head: bytes, name: str) -> str:
    """A gzip stream is read as NIfTI only if it inflates to a NIfTI header."""
    try:
        inner = zlib.decompressobj(wbits=31).decompress(head, _NIFTI_HEADER_BYTES)
    except zlib.error as exc:
        raise InvalidInputError(f"{name} is truncated or corrupt: invalid gzip data ({exc})") from exc
    kind = _nifti_kind(inner)
    if kind == "single":
        return "nifti_gz"
    if len(inner) < 348:
        raise InvalidInputError(
            f"{name} is truncated or corrupt: the gzip stream ends after {len(inner)} bytes, "
            "inside the NIfTI header"
        )
    raise UnsupportedFormatError(f"{name} is gzip-compressed but does not hold a NIfTI image")


def _nifti_kind(head: bytes) -> str | None:
    """``single`` for a .nii header (NIfTI-1 or -2), ``pair`` for a .hdr of a pair, else None."""
    if len(head) < 348:
        return None
    size_le = int.from_bytes(head[:4], "little")
    size_be = int.from_bytes(head[:4], "big")
    if 348 in (size_le, size_be):
        magic = head[344:348]
        if magic == b"n+1\x00":
            return "single"
        if magic == b"ni1\x00":
            return "pair"
    if 540 in (size_le, size_be):
        magic = head[4:8]  # NIfTI-2 keeps its magic right after sizeof_hdr
        if magic == b"n+2\x00":
            return "single"
        if magic == b"ni2\x00":
            return "pair"
    return None


def _suffix(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(lower).suffix


def _format_from_suffix_or_none(suffix: str) -> str | None:
    return {
        ".nii": "nifti",
        ".nii.gz": "nifti",
        ".nrrd": "nrrd",
        ".nhdr": "nrrd",
        ".mha": "metaimage",
        ".mhd": "metaimage",
        ".zip": "zip",
    }.get(suffix, "dicom" if suffix in _DICOM_SUFFIXES else None)


def _format_from_suffix(suffix: str, head: bytes, name: str) -> str:
    """Suffix fallback for bytes without a signature. Formats with a mandatory signature
    (NIfTI, NRRD, zip) are refused here: the name says one thing, the bytes another."""
    fmt = _format_from_suffix_or_none(suffix)
    if fmt in ("metaimage", "dicom"):  # MetaImage keys may come in any order; DICOM may lack a preamble
        return fmt
    start = head[:16]
    if fmt is not None:
        raise UnsupportedFormatError(
            f"{name} is named {suffix} but is not a {_FORMAT_LABELS[fmt]} file (it starts with {start!r})"
        )
    raise UnsupportedFormatError(
        f"{name} is not a supported volume format (it starts with {start!r}); send {_SUPPORTED_TEXT}"
    )


def _has_case_suffix(path: Path) -> bool:
    return _suffix(path.name) in (*VOLUME_SUFFIXES, ZIP_SUFFIX)


# --------------------------------------------------------------------------- dispatch and helpers


@dataclass(frozen=True)
class _ReadOptions:
    """Where a file may take its data from and where a zip is unpacked.

    ``data_dir``: the only folder a MetaImage/NRRD header may name a data file in; None = inline
    data only (uploads)."""

    data_dir: Path | None
    work_dir: Path | None
    max_zip_members: int


def _read_by_format(path: Path, fmt: str, name: str, max_voxels: int, options: _ReadOptions) -> Volume:
    if fmt in ("nifti", "nifti_gz"):
        return _read_nifti(path, name, max_voxels, compressed=fmt == "nifti_gz")
    if fmt in ("nrrd", "metaimage"):
        # Before ITK sees the file: ITK would follow a data-file name wherever it points.
        with _library_errors(f"{name} could not be opened"):
            check_external_data(path, fmt, name, allowed_dir=options.data_dir)
        return _read_sitk_file(path, name, fmt, max_voxels)
    if fmt == "zip":
        return _read_dicom_zip(path, name, max_voxels, options)
    raise UnsupportedFormatError(f"{name}: unsupported format {fmt}")  # pragma: no cover


@contextmanager
def _library_errors(what: str, error: type[InvalidInputError] = InvalidInputError) -> Iterator[None]:
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


@contextmanager
def _suffixed(path: Path, suffix: str) -> Iterator[Path]:
    """``path`` under a name ending in ``suffix`` (a hard link next to it, a copy where links
    are not possible), removed on exit; ``path`` itself when it already has the suffix."""
    if path.name.lower().endswith(suffix):
        yield path
        return
    view = path.with_name(f"{path.name}{suffix}")
    try:
        os.link(path, view)
    except OSError:
        shutil.copyfile(path, view)
    try:
        yield view
    finally:
        view.unlink(missing_ok=True)


@contextmanager
def _temporary_copy(data: bytes, suffix: str, work_dir: Path | None) -> Iterator[Path]:
    """Write ``data`` to a private temp file (0600) and remove it on exit, whatever happens."""
    fd, tmp_name = tempfile.mkstemp(prefix="swinxseg-upload-", suffix=suffix, dir=work_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _effective_shape(shape: Sequence[int], name: str) -> tuple[int, int, int]:
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


def _check_voxel_limit(shape: Sequence[int], max_voxels: int, name: str) -> None:
    """Refuse from the header, before any voxel is read or allocated."""
    count = math.prod(int(s) for s in shape)
    if count > max_voxels:
        shape_text = "x".join(str(int(s)) for s in shape)
        raise InputTooLargeError(
            f"{name} is too large: shape {shape_text} = {count:,} voxels, the limit is {max_voxels:,}"
        )


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind not in "iuf":
        raise InvalidInputError(
            f"{name} has voxel type {dtype}; a CT volume needs integer or floating-point voxels"
        )


def _check_affine(affine: np.ndarray, name: str) -> None:
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


def _finish(
    array: np.ndarray, affine: np.ndarray, name: str, source_format: str, warnings: Sequence[CaseWarning] = ()
) -> Volume:
    """Final checks on the voxels, then wrap them in a Volume carrying ``warnings``."""
    _check_dtype(array.dtype, name)
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


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path, name: str, max_voxels: int, *, compressed: bool) -> Volume:
    """NIfTI-1/2 via nibabel, dtype kept; placed by :mod:`service.io.nifti_header`'s rule.

    ``compressed`` comes from the sniffed bytes, never from the file name: nibabel would pick
    gzip or not by the suffix, so a gzip-compressed ``.nii`` or a plain ``.nii.gz`` would fail
    in batch mode while the same bytes uploaded over HTTP worked.
    """
    with _library_errors(f"{name} has an unreadable NIfTI header"), _open_nifti(path, compressed) as fh:
        img = _nifti_from_stream(fh)
        shape = _effective_shape(img.shape, name)
        _check_voxel_limit(shape, max_voxels, name)
        _check_dtype(img.get_data_dtype(), name)
        geometry, warnings = nifti_geometry(img.header, shape, name)
        _check_affine(geometry.affine, name)
        with _library_errors(f"{name} is truncated or corrupt"):
            array = np.asanyarray(img.dataobj)
    if array.shape != shape:
        array = array.reshape(shape)  # trailing singleton dimensions only
    volume = _finish(array, geometry.affine, name, "nifti", warnings)
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


# --------------------------------------------------------------------------- NRRD / MetaImage


_SITK_IMAGE_IO = {"nrrd": "NrrdImageIO", "metaimage": "MetaImageIO"}


def _read_sitk_file(path: Path, name: str, fmt: str, max_voxels: int) -> Volume:
    """NRRD or MetaImage via SimpleITK; size and geometry are checked from the header first."""
    label = _FORMAT_LABELS[fmt]
    reader = _simpleitk().ImageFileReader()
    # Pin the ImageIO: ITK would otherwise try every reader it has, by suffix and by content.
    reader.SetImageIO(_SITK_IMAGE_IO[fmt])
    reader.SetFileName(str(path))
    with _library_errors(f"{name} is not a readable {label} file"):
        reader.ReadImageInformation()
    shape = _effective_shape(reader.GetSize(), name)
    if reader.GetNumberOfComponents() != 1:
        raise InvalidInputError(
            f"{name} has {reader.GetNumberOfComponents()} components per voxel (a colour or vector image); "
            "a CT volume has one"
        )
    _check_voxel_limit(shape, max_voxels, name)
    affine = sitk_geometry_to_ras_affine(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
    _check_affine(affine, name)
    with _library_errors(f"{name} is truncated or corrupt"):
        image = reader.Execute()
    array = _sitk_array(image).reshape(shape)
    return _finish(array, affine, name, fmt)


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
    array = _simpleitk().GetArrayFromImage(image)
    return array.transpose(tuple(range(array.ndim - 1, -1, -1)))


def volume_from_sitk(
    image: sitk.Image, *, name: str = "image", source_format: str = "sitk", warnings: Sequence[CaseWarning] = ()
) -> Volume:
    """A 3D SimpleITK image as a Volume (array (i, j, k), RAS+ affine), with the usual checks."""
    shape = _effective_shape(image.GetSize(), name)
    affine = sitk_geometry_to_ras_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    _check_affine(affine, name)
    return _finish(_sitk_array(image).reshape(shape), affine, name, source_format, warnings)


# --------------------------------------------------------------------------- DICOM


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


def _looks_like_dicom(path: Path) -> bool:
    """A DICOM part-10 file ("DICM" at byte 128) or a file with a DICOM suffix."""
    if path.name.upper() == "DICOMDIR":  # the index of a DICOM medium, not an image
        return False
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_files(folder: Path) -> list[Path]:
    """DICOM files under ``folder`` (recursively, hidden entries and macOS zip debris skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for file_name in sorted(files):
            path = Path(root) / file_name
            if not file_name.startswith(".") and path.is_file() and _looks_like_dicom(path):
                found.append(path)
    return found


def _folder_has_dicom(folder: Path) -> bool:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for file_name in sorted(files):
            if not file_name.startswith(".") and _looks_like_dicom(Path(root) / file_name):
                return True
    return False


def _read_dicom_zip(path: Path, name: str, max_voxels: int, options: _ReadOptions) -> Volume:
    """Extract the zip into a temp folder in ``options.work_dir`` (always removed) and read the
    series in it."""
    with tempfile.TemporaryDirectory(prefix="swinxseg-dicom-", dir=options.work_dir) as tmp:
        folder = Path(tmp)
        _extract_zip(path, folder, name, max_voxels, options.max_zip_members)
        volume = _read_dicom_folder(folder, name, max_voxels, in_zip=True)
        # The voxels are already in memory (GetArrayFromImage copies), so removing the files is safe.
        return volume


def _extract_zip(path: Path, folder: Path, name: str, max_voxels: int, max_members: int) -> None:
    byte_limit = max_voxels * _ZIP_BYTES_PER_VOXEL + _ZIP_EXTRA_BYTES
    check_zip_directory(path, name, max_members)  # before zipfile parses the whole directory
    with _library_errors(f"{name} is not a valid zip archive"):
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
        with _library_errors(f"{name} is truncated or corrupt"):
            for member in members:
                # ZipFile.extract strips absolute paths and "..", so nothing lands outside folder.
                archive.extract(member, folder)


def _hidden_member(member_name: str) -> bool:
    parts = Path(member_name).parts
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _read_dicom_folder(folder: Path, name: str, max_voxels: int, *, in_zip: bool = False) -> Volume:
    """One DICOM series: headers checked and ordered along the slice normal, then read with
    SimpleITK's ImageSeriesReader (which applies rescale slope/intercept, giving HU)."""
    where = "the zip" if in_zip else "the folder"
    files = _dicom_files(folder)
    if not files:
        raise DicomSeriesError(f"{name}: no DICOM files found in {where}{_listing_hint(folder)}")
    slices, warnings = _read_slice_headers(files, folder, name)
    ordered = _check_and_order_series(slices, folder, name)
    rows, cols = ordered[0].rows, ordered[0].cols
    _check_voxel_limit((cols, rows, len(ordered)), max_voxels, name)
    image = _read_series_pixels(ordered, name)
    # GDCM assumes 1 mm when PixelSpacing is missing; the spacing we read from the tags counts.
    row_spacing, col_spacing = ordered[0].pixel_spacing
    image.SetSpacing((col_spacing, row_spacing, *image.GetSpacing()[2:]))
    warnings += _series_warnings(ordered, name)
    volume = volume_from_sitk(image, name=name, source_format="dicom", warnings=warnings)
    _check_series_geometry(volume, ordered, name)
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
    sitk = _simpleitk()
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
    sitk = _simpleitk()
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
    with _library_errors(f"{name}: the DICOM pixel data could not be read", DicomSeriesError):
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
