"""The cases of a batch input folder and the one rule that names a case.

The name is what the outputs are called: batch writes ``<case>.nii.gz``, HTTP answers with
``<case>_mask.nii.gz``, training pairs an image with its label by it. All of them call
:func:`case_name`, so the same input file gets the same name everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

from service.errors import InvalidInputError
from service.io.dicom_series import folder_has_dicom
from service.io.formats import DICOM_SUFFIXES, VOLUME_SUFFIXES, ZIP_SUFFIX, file_suffix

#: The suffixes a case name drops (matched ignoring case): the volume formats, a zip of a DICOM
#: series, ``.gz`` (a gzip-compressed NIfTI) and the DICOM suffixes. ``.nii.gz`` comes before ``.gz``.
CASE_NAME_SUFFIXES: tuple[str, ...] = (*VOLUME_SUFFIXES, ZIP_SUFFIX, ".gz", *DICOM_SUFFIXES)
_FLARE_CHANNEL = re.compile(r"_0000$")


def case_name(file_name: str) -> str:
    """The case name of a file, by FLARE's rule: drop the image suffix, then a trailing ``_0000``.

    ``CASE_0000.nii.gz`` -> ``CASE``, ``FLARE23_0042_0000.nii.gz`` -> ``FLARE23_0042``,
    ``ct.nii`` -> ``ct``, ``x.NRRD`` -> ``x``, ``series_0000.zip`` -> ``series``,
    ``scan_0000`` -> ``scan``. FLARE names a case's CT ``<case>_0000`` (its first and only
    channel) and the case's label ``<case>``, so the mask of ``CASE_0000.nii.gz`` is ``CASE``'s.

    - The image suffix is one of :data:`CASE_NAME_SUFFIXES`, matched ignoring case; any other
      suffix is part of the name (``scan.v2`` stays ``scan.v2``).
    - ``_0000`` goes only when something is left before it (``_0000.nii.gz`` -> ``_0000``).
    - A name that is only a suffix gives ``""`` (``.nii.gz``); the caller picks its default.

    ``file_name`` is a bare name (no folder). Callers that put the name in a header or a path
    they do not control make it safe themselves (:func:`service.api.uploads.case_name_of`).
    """
    lower = file_name.lower()
    stem = next((file_name[: -len(s)] for s in CASE_NAME_SUFFIXES if lower.endswith(s)), file_name)
    return _FLARE_CHANNEL.sub("", stem) or stem


def case_name_for(path: Path) -> str:
    """The case name of a batch input: :func:`case_name` of a file's name; a DICOM folder's
    name as it is (a folder is a series, not a FLARE channel file: ``dir_0000`` stays)."""
    path = Path(path)
    if path.is_dir():
        return path.name
    return case_name(path.name) or path.name


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
