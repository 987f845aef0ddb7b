"""Headers that name another file: checked before a file is handed to ITK.

MetaImage (``ElementDataFile``) and NRRD (``data file:`` / ``datafile:``) headers may say that
the voxels live in another file. ITK follows such a name wherever it points: ``/etc/passwd``, a
device that never ends (``/dev/zero``) or a FIFO that blocks the reader for good. So:

- an **upload** (``allowed_dir=None``) is read only from its own bytes: its data must be inline
  (MetaImage ``ElementDataFile = LOCAL``, NRRD without a data-file field), else
  :class:`~service.errors.UnsupportedFormatError` (HTTP 415) naming the field;
- a **batch** file (``allowed_dir`` = the case's own folder) may name one data file by a relative
  path that stays inside that folder (no absolute path, no ``..``, no symlink leading out) and
  is a regular file (no FIFO, device or socket); file lists and patterns are refused.

Only the text header is read (at most ``HEADER_SCAN_BYTES``), never the voxels.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from service.errors import InvalidInputError, UnsupportedFormatError

#: How much of a header is read to look for data-file fields (bytes).
HEADER_SCAN_BYTES = 64 * 1024
# MetaIO treats exactly these spellings as "the voxels follow the header in this file".
_METAIMAGE_INLINE = frozenset({"LOCAL", "Local", "local"})
_METAIMAGE_KEY = "ElementDataFile"
# teem reads the data-file field in either spelling, with any letter case and spacing.
_NRRD_DATAFILE = re.compile(rb"^\s*data\s*file\s*:(?!=)(.*)$", re.IGNORECASE)


def check_external_data(path: Path, fmt: str, name: str, *, allowed_dir: Path | None) -> None:
    """Refuse a header whose data file is not allowed (see the module docstring).

    Args:
        path: the header file (``.mha``/``.mhd``/``.nrrd``/``.nhdr``) on disk.
        fmt: ``metaimage`` or ``nrrd``; other formats hold their own voxels and pass.
        name: the file name shown in messages.
        allowed_dir: ``None`` for uploads (inline data only), else the only folder a data file
            may be in.

    Raises:
        UnsupportedFormatError: an upload naming another file, or a data-file list/pattern.
        InvalidInputError: a batch data file outside ``allowed_dir``, missing or not a regular file.
    """
    if fmt not in ("metaimage", "nrrd"):
        return
    with path.open("rb") as fh:
        head = fh.read(HEADER_SCAN_BYTES)
    target = _metaimage_data_file(head, name) if fmt == "metaimage" else _nrrd_data_file(head)
    if target is None:
        return
    field = "ElementDataFile" if fmt == "metaimage" else "data file"
    if allowed_dir is None:
        raise UnsupportedFormatError(
            f"{name}: the header names another file as its voxel data ({field} = {_shown(target)}); "
            "uploads are read only from their own bytes: send a single-file .mha (ElementDataFile = LOCAL), "
            "an .nrrd with attached data, or a .nii.gz"
        )
    _check_batch_data_file(target, field, name, Path(allowed_dir))


def _metaimage_data_file(head: bytes, name: str) -> str | None:
    """The ``ElementDataFile`` value unless it is LOCAL; None for inline data.

    MetaIO stops reading the header at the first ``ElementDataFile`` line (binary data follows).
    A key spelled in another letter case is refused too unless its value is LOCAL, so a decoy
    line cannot hide the real one from this check."""
    for raw in head.split(b"\n"):
        line = raw.decode("latin-1").strip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key.lower() != _METAIMAGE_KEY.lower():
            continue
        if value not in _METAIMAGE_INLINE:
            return value
        if key == _METAIMAGE_KEY:
            return None
    raise InvalidInputError(
        f"{name}: no ElementDataFile line in the first {HEADER_SCAN_BYTES // 1024} KiB of the MetaImage header"
    )


def _nrrd_data_file(head: bytes) -> str | None:
    """The NRRD data-file field's value, or None (data attached). The header ends at the first
    blank line; every line before it is looked at."""
    for raw in head.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line.strip():
            return None
        match = _NRRD_DATAFILE.match(line)
        if match:
            return match.group(1).decode("latin-1").strip() or "(empty)"
    return None


def _shown(value: str) -> str:
    return repr(value[:200])


def _check_batch_data_file(target: str, field: str, name: str, folder: Path) -> None:
    if target.upper().startswith("LIST") or "%" in target or " " in target.strip():
        raise UnsupportedFormatError(
            f"{name}: {field} = {_shown(target)} is a list or pattern of data files; only one data file is supported"
        )
    pure = PurePosixPath(target)
    if pure.is_absolute() or PureWindowsPath(target).is_absolute() or ".." in pure.parts or "\\" in target:
        raise InvalidInputError(
            f"{name}: {field} = {_shown(target)} points outside the case's folder; "
            "a data file must be named relative to the header, without '..'"
        )
    candidate = folder / pure
    try:
        resolved = candidate.resolve(strict=True)
        mode = os.stat(resolved).st_mode
    except (OSError, RuntimeError) as exc:
        raise InvalidInputError(f"{name}: data file {_shown(target)} ({field}) cannot be opened: {exc}") from None
    if not resolved.is_relative_to(folder.resolve()):
        raise InvalidInputError(f"{name}: data file {_shown(target)} is a link leading outside the case's folder")
    if not stat.S_ISREG(mode):
        raise InvalidInputError(
            f"{name}: data file {_shown(target)} is not a regular file (a FIFO, device, socket or folder)"
        )


def referenced_data_file(path: Path, fmt: str) -> str | None:
    """The data file a header names (None for inline data or another format); for listing a
    batch folder, so a ``.raw`` next to its ``.mhd`` is reported as part of that case."""
    try:
        with path.open("rb") as fh:
            head = fh.read(HEADER_SCAN_BYTES)
        if fmt == "metaimage":
            return _metaimage_data_file(head, path.name)
        if fmt == "nrrd":
            return _nrrd_data_file(head)
    except (OSError, InvalidInputError):
        return None
    return None
