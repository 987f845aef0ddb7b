"""Warnings about one input case: the type, the stable codes, and how they travel.

A warning says the case was segmented but something about the input makes the result less
trustworthy (orientation guessed, intensities that do not look like HU, ...). Readers and input
checks attach them to the :class:`~service.volume.Volume` (``meta["warnings"]``); batch reports,
job status and HTTP response headers show them to the user. Each code can be turned into a
refusal with ``SWINXSEG_REFUSE_WARNINGS`` (see :mod:`service.input_checks`).

Named ``case_warnings`` so that it never shadows the standard library's ``warnings``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from service.volume import Volume

ORIENTATION_UNKNOWN = "orientation_unknown"
QFORM_SFORM_DISAGREE = "qform_sform_disagree"
INTENSITY_NOT_HU = "intensity_not_hu"
NON_CT_MODALITY = "non_ct_modality"
PIXEL_SPACING_SUBSTITUTED = "pixel_spacing_substituted"
DICOM_FILES_SKIPPED = "dicom_files_skipped"
CONSTANT_INTENSITY = "constant_intensity"

#: Every code, with what it means (docs/SERVICE.md lists the same table; a test keeps them equal).
WARNING_CODES: dict[str, str] = {
    ORIENTATION_UNKNOWN: "NIfTI with qform_code = sform_code = 0: the orientation is a guess from pixdim",
    QFORM_SFORM_DISAGREE: "NIfTI qform and sform both set but place the volume differently",
    INTENSITY_NOT_HU: "the intensities do not look like CT in Hounsfield units",
    NON_CT_MODALITY: "DICOM Modality is not CT",
    PIXEL_SPACING_SUBSTITUTED: "DICOM PixelSpacing missing; the in-plane spacing came from another tag",
    DICOM_FILES_SKIPPED: "files in the DICOM folder or zip that hold no readable image were skipped",
    CONSTANT_INTENSITY: "every voxel has the same value; the mask will be empty",
}

#: Response header carrying a case's warnings as a compact JSON list (ASCII only).
WARNINGS_HEADER = "X-Segmentation-Warnings"


@dataclass(frozen=True)
class CaseWarning:
    """One warning: ``code`` is a key of :data:`WARNING_CODES`, ``message`` is for people."""

    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in WARNING_CODES:
            raise ValueError(f"unknown warning code {self.code!r}")

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def warnings_of(volume: Volume) -> list[CaseWarning]:
    """The warnings attached to ``volume`` (none when it carries none)."""
    return list(volume.meta.get("warnings", ()))


def with_warnings(volume: Volume, extra: Iterable[CaseWarning]) -> Volume:
    """``volume`` (same array and affine, no copy) with ``extra`` appended to its warnings."""
    meta = dict(volume.meta)
    meta["warnings"] = (*warnings_of(volume), *extra)
    return Volume(array=volume.array, affine=volume.affine, meta=meta)


def as_dicts(warnings: Iterable[CaseWarning]) -> list[dict[str, str]]:
    return [w.to_dict() for w in warnings]


def header_value(warnings: Iterable[CaseWarning]) -> str:
    """The :data:`WARNINGS_HEADER` value: a JSON list of ``{code, message}``, ``[]`` when none.

    ``ensure_ascii``: header values must be latin-1; file names in messages may not be."""
    return json.dumps(as_dicts(warnings), separators=(",", ":"), ensure_ascii=True)
