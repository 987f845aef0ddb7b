"""The one output switch: which files a case produces (``nifti``, ``rtstruct``, ``seg``).

Used by ``swinxseg batch --output``, ``POST /v1/segment?format=`` and ``POST /v1/jobs?outputs=``.
DICOM outputs need a DICOM series input: :func:`check_outputs_possible` refuses them for any other
input right after reading, before inference, so nothing is computed or half-written for a request
that cannot be met.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from service.errors import InvalidInputError
from service.outputs.dicom_common import ModelInfo, write_bytes_atomically
from service.outputs.source_series import source_series
from service.volume import Volume

OUTPUT_KINDS = ("nifti", "rtstruct", "seg")
DICOM_OUTPUTS = ("rtstruct", "seg")
DEFAULT_OUTPUTS = ("nifti",)
# File name suffix of each output after the case name (batch and job folders).
SUFFIXES = {"nifti": ".nii.gz", "rtstruct": "_rtstruct.dcm", "seg": "_seg.dcm"}
MEDIA_TYPES = {"nifti": "application/gzip", "rtstruct": "application/dicom", "seg": "application/dicom"}


def parse_outputs(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"nifti,rtstruct"`` (or a list) as a tuple in canonical order, duplicates dropped.

    Raises:
        InvalidInputError: an unknown kind, or none at all.
    """
    if value is None:
        return DEFAULT_OUTPUTS
    items = value.split(",") if isinstance(value, str) else [part for item in value for part in item.split(",")]
    asked = {item.strip().lower() for item in items if item.strip()}
    unknown = sorted(asked - set(OUTPUT_KINDS))
    if unknown:
        raise InvalidInputError(f"unknown output {', '.join(unknown)}; choose from {', '.join(OUTPUT_KINDS)}")
    if not asked:
        raise InvalidInputError(f"no output asked for; choose from {', '.join(OUTPUT_KINDS)}")
    return tuple(kind for kind in OUTPUT_KINDS if kind in asked)


def check_outputs_possible(volume: Volume, outputs: Iterable[str]) -> None:
    """Refuse, before inference, DICOM outputs the input cannot carry.

    Raises:
        InvalidInputError: RTSTRUCT/SEG asked for a NIfTI/NRRD/MHA input (HTTP 422).
        DicomSeriesError: the series has blank/duplicate UIDs, or is oblique (RTSTRUCT).
    """
    for kind in outputs:
        if kind == "rtstruct":
            source_series(volume, "RTSTRUCT", axial_only=True)
        elif kind == "seg":
            source_series(volume, "SEG")


def output_bytes(kind: str, ct: Volume, mask: Volume, labels: dict[int, str], model: ModelInfo) -> bytes:
    """One output's file content."""
    if kind == "nifti":
        from service.io.writers import mask_to_nifti_bytes

        return mask_to_nifti_bytes(mask)
    if kind == "rtstruct":
        from service.outputs.rtstruct import rtstruct_bytes

        return rtstruct_bytes(ct, mask, labels, model)
    if kind == "seg":
        from service.outputs.seg import seg_bytes

        return seg_bytes(ct, mask, labels, model)
    raise InvalidInputError(f"unknown output {kind}")


def write_outputs(
    outputs: Iterable[str], ct: Volume, mask: Volume, labels: dict[int, str], model: ModelInfo, *, stem: Path
) -> dict[str, Path]:
    """Write each output as ``stem`` + its suffix; all are built in memory first, so a refusal or
    error writes none of the DICOM files. Returns {kind: path}."""
    from service.io.writers import write_mask

    outputs = tuple(outputs)
    built = {kind: output_bytes(kind, ct, mask, labels, model) for kind in outputs if kind != "nifti"}
    paths = {}
    if "nifti" in outputs:
        paths["nifti"] = Path(f"{stem}{SUFFIXES['nifti']}")
        write_mask(mask, paths["nifti"])  # keeps a NIfTI input's own header fields
    for kind, data in built.items():
        paths[kind] = write_bytes_atomically(data, Path(f"{stem}{SUFFIXES[kind]}"))
    return paths
