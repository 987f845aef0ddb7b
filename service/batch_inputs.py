"""What a batch input folder holds: every entry is a case or skipped with a reason.

A case is a volume file with a supported suffix (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``,
``.mha``, ``.mhd``), a ``.zip``, or a folder holding DICOM files. Everything else is listed with
why it is not a case, so nothing in the folder is passed over without a word: hidden entries,
dangling symlinks and symlink loops, FIFOs/devices/sockets, unreadable folders, folders
without DICOM files, other files, and the data files that ``.mhd``/``.nhdr`` headers name.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import InvalidInputError
from service.io.cases import case_name_for
from service.io.external_data import referenced_data_file
from service.io.formats import VOLUME_SUFFIXES, ZIP_SUFFIX, file_suffix, looks_like_dicom

_HEADER_FORMATS = {".mhd": "metaimage", ".mha": "metaimage", ".nhdr": "nrrd", ".nrrd": "nrrd"}
_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


@dataclass
class InputListing:
    cases: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (entry, reason)


def scan_input_folder(input_dir: Path) -> InputListing:
    """Every entry of ``input_dir`` (not recursive), sorted by name, as a case or a skip reason.

    Raises:
        InvalidInputError: ``input_dir`` is not a folder or cannot be listed.
    """
    input_dir = Path(input_dir)
    try:
        entries = sorted(input_dir.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InvalidInputError(f"input folder {input_dir} cannot be listed: {exc.strerror or exc}") from None
    listing = InputListing()
    for entry in entries:
        reason = _skip_reason(entry)
        if reason is None:
            listing.cases.append(entry)
        else:
            listing.skipped.append((entry, reason))
    _mark_data_files(listing)
    return listing


def _skip_reason(entry: Path) -> str | None:
    if entry.name.startswith("."):
        return "hidden entry (name starts with '.')"
    try:
        mode = os.stat(entry).st_mode  # follows symlinks
    except OSError as exc:
        return _stat_failure(entry, exc)
    if stat.S_ISDIR(mode):
        return _folder_reason(entry)
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            return f"not a regular file: {kind}"
    if file_suffix(entry.name) in (*VOLUME_SUFFIXES, ZIP_SUFFIX):
        return None
    return f"not a supported volume file (suffix {file_suffix(entry.name) or 'none'!r})"


def _stat_failure(entry: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if entry.is_symlink() and exc.errno == errno.ENOENT:
        return f"dangling symlink (to {os.readlink(entry)!r})"
    return f"cannot be read: {exc.strerror or exc}"


def _folder_reason(folder: Path) -> str | None:
    """None for a DICOM case folder; else why not (unreadable, no DICOM files)."""
    errors: list[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=errors.append):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for file_name in sorted(files):
            if not file_name.startswith(".") and looks_like_dicom(Path(root) / file_name):
                return None
    if any(Path(e.filename or "") == folder for e in errors):
        return f"folder cannot be read: {errors[0].strerror or errors[0]}"
    unread = f"; {len(errors)} subfolder(s) could not be read" if errors else ""
    return f"folder holds no DICOM files{unread}"


def _mark_data_files(listing: InputListing) -> None:
    """A ``.raw`` named by a case's header is part of that case: say so instead of 'unsupported'."""
    owners: dict[str, str] = {}
    for case in listing.cases:
        fmt = _HEADER_FORMATS.get(file_suffix(case.name))
        target = referenced_data_file(case, fmt) if fmt and case.is_file() else None
        if target:
            owners[os.path.normpath(target)] = case_name_for(case)
    listing.skipped = [
        (entry, f"data file of case {owners[entry.name]}" if entry.name in owners else reason)
        for entry, reason in listing.skipped
    ]
