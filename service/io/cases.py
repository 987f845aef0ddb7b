"""The cases of a batch input folder and the name each case goes by."""

from __future__ import annotations

import re
from pathlib import Path

from service.errors import InvalidInputError
from service.io.dicom_series import folder_has_dicom
from service.io.formats import VOLUME_SUFFIXES, ZIP_SUFFIX, file_suffix

_FLARE_CHANNEL = re.compile(r"_0000$")


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
        if entry.is_file() and has_case_suffix(entry):
            cases.append(entry)
        elif entry.is_dir() and folder_has_dicom(entry):
            cases.append(entry)
    return cases


def has_case_suffix(path: Path) -> bool:
    return file_suffix(path.name) in (*VOLUME_SUFFIXES, ZIP_SUFFIX)
