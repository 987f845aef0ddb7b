"""What a file holds, decided from its leading bytes, with the name's suffix as the fallback.

NIfTI-1/2 (plain or gzip-compressed), NRRD, a zip (of one DICOM series) and DICOM have a
signature; MetaImage is recognised by its header keys. The bytes win over the name; a name
whose suffix promises a format with a signature the bytes lack is refused. A single DICOM file
and a NIfTI ``.hdr``/``.img`` pair are refused with a message saying what to send instead.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

from service.errors import DicomSeriesError, InvalidInputError, UnsupportedFormatError

logger = logging.getLogger(__name__)

#: File suffixes (lower case) of the single-file formats; ``.zip`` holds a DICOM series.
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
ZIP_SUFFIX = ".zip"
# Suffixes that mark a file as DICOM when it lacks the "DICM" preamble marker.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

# How many leading bytes to look at when sniffing; enough compressed bytes to inflate a
# NIfTI-2 header (540 bytes) even from a poorly compressed gzip stream.
SNIFF_BYTES = 64 * 1024
_NIFTI_HEADER_BYTES = 544

#: Format names as people know them, for messages.
FORMAT_LABELS = {
    "nifti": "NIfTI",
    "nrrd": "NRRD",
    "metaimage": "MetaImage",
    "zip": "zip",
    "dicom": "DICOM",
}
_SUPPORTED_TEXT = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha), a DICOM series folder or a .zip of one"
)
#: The suffix each format's file should carry for the libraries that pick a reader by suffix.
SUFFIX_FOR_FORMAT = {"nifti": ".nii", "nifti_gz": ".nii.gz", "nrrd": ".nrrd", "metaimage": ".mha", "zip": ".zip"}
_METAIMAGE_KEY = re.compile(rb"^\s*(ObjectType|NDims|ObjectSubType|DimSize)\s*=", re.MULTILINE)


def detect_format(head: bytes, name: str) -> str:
    """Decide the format from the leading bytes, falling back to the name's suffix.

    Returns one of ``nifti``, ``nifti_gz``, ``nrrd``, ``metaimage``, ``zip``; a single DICOM
    file and anything unrecognised raise.
    """
    if not head:
        raise InvalidInputError(f"{name} is empty (0 bytes)")
    fmt = _sniff_magic(head, name)
    suffix = file_suffix(name)
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


def file_suffix(name: str) -> str:
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
    }.get(suffix, "dicom" if suffix in DICOM_SUFFIXES else None)


def _format_from_suffix(suffix: str, head: bytes, name: str) -> str:
    """Suffix fallback for bytes without a signature. Formats with a mandatory signature
    (NIfTI, NRRD, zip) are refused here: the name says one thing, the bytes another."""
    fmt = _format_from_suffix_or_none(suffix)
    if fmt in ("metaimage", "dicom"):  # MetaImage keys may come in any order; DICOM may lack a preamble
        return fmt
    start = head[:16]
    if fmt is not None:
        raise UnsupportedFormatError(
            f"{name} is named {suffix} but is not a {FORMAT_LABELS[fmt]} file (it starts with {start!r})"
        )
    raise UnsupportedFormatError(
        f"{name} is not a supported volume format (it starts with {start!r}); send {_SUPPORTED_TEXT}"
    )


def looks_like_dicom(path: Path) -> bool:
    """A DICOM part-10 file ("DICM" at byte 128) or a file with a DICOM suffix."""
    if path.name.upper() == "DICOMDIR":  # the index of a DICOM medium, not an image
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"
