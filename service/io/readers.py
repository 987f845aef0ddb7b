"""Read CT volumes from files, folders and uploaded bytes into a :class:`~service.volume.Volume`.

Formats: NIfTI-1/2 (``.nii``, ``.nii.gz``, via nibabel), NRRD (``.nrrd``, ``.nhdr``) and
MetaImage (``.mha``, ``.mhd``) via SimpleITK, a DICOM series folder, and a ``.zip`` holding one
DICOM series. Every reader returns the affine in RAS+ mm (see docs/ARCHITECTURE.md) and checks
the input before it is used: size limits are enforced from the header, before any voxel data is
read, and every library exception is turned into one of the typed errors of
:mod:`service.errors` with the file name in the message.

This module holds the entry points and the dispatch; each concern has its own module:
:mod:`~service.io.formats` (what a file holds), :mod:`~service.io.nifti_reader`,
:mod:`~service.io.sitk_reader` (NRRD, MetaImage), :mod:`~service.io.dicom_series` (folder, zip),
:mod:`~service.io.volume_checks` (header and voxel checks, library errors).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.errors import InvalidInputError, SwinxsegError, UnsupportedFormatError

# The training code (model_export/training/data.py, being moved to training/ on another branch)
# still imports these two from here; they live in service.io.cases. Drop this import when it
# imports them from there.
from service.io.dicom_series import read_dicom_folder, read_dicom_zip
from service.io.external_data import check_external_data
from service.io.formats import SNIFF_BYTES, SUFFIX_FOR_FORMAT, detect_format
from service.io.nifti_reader import read_nifti
from service.io.sitk_reader import read_sitk_file
from service.io.volume_checks import library_errors
from service.volume import Volume

DEFAULT_MAX_VOXELS = 800_000_000
#: Entries a DICOM zip may hold (each costs a file and a header parse); see Settings.max_zip_members.
DEFAULT_MAX_ZIP_MEMBERS = 20_000


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
        return read_dicom_folder(path, name, max_voxels)
    if not path.is_file():
        raise InvalidInputError(f"{name}: no such file or folder (or not a regular file)")
    with library_errors(f"{name} could not be opened"):
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    fmt = detect_format(head, name)
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
        head = fh.read(SNIFF_BYTES)
    fmt = detect_format(head, name)
    options = _ReadOptions(data_dir=None, work_dir=work_dir, max_zip_members=max_zip_members)
    with _suffixed(Path(path), SUFFIX_FOR_FORMAT[fmt]) as tmp:
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
        head = fh.read(SNIFF_BYTES)
    fmt = detect_format(head, name)
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
    detect_format(bytes(data[:SNIFF_BYTES]), name)  # refuse garbage before writing it anywhere
    with _temporary_copy(data, ".bin", work_dir) as tmp:
        return read_volume_upload(tmp, filename=filename, max_voxels=max_voxels, work_dir=work_dir)


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
        return read_nifti(path, name, max_voxels, compressed=fmt == "nifti_gz")
    if fmt in ("nrrd", "metaimage"):
        # Before ITK sees the file: ITK would follow a data-file name wherever it points.
        with library_errors(f"{name} could not be opened"):
            check_external_data(path, fmt, name, allowed_dir=options.data_dir)
        return read_sitk_file(path, name, fmt, max_voxels)
    if fmt == "zip":
        return read_dicom_zip(path, name, max_voxels, work_dir=options.work_dir, max_members=options.max_zip_members)
    raise UnsupportedFormatError(f"{name}: unsupported format {fmt}")  # pragma: no cover


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
