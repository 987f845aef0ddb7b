"""Typed errors with a message a person can act on.

One place maps them to HTTP statuses (``http_status``) and CLI exit codes (``exit_code``);
library code raises them and never formats tracebacks for users.
"""

from __future__ import annotations


class SwinxsegError(Exception):
    """Base class: ``code`` is a stable machine-readable reason, the message is for people."""

    code = "error"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.message}


class InvalidInputError(SwinxsegError):
    """The input volume is readable as bytes but not a usable CT (2D, NaNs, corrupt, ...)."""

    code = "invalid_input"
    http_status = 422
    exit_code = 2


class UnsupportedFormatError(InvalidInputError):
    """The bytes are not any format we read (wrong media type, a text file, ...)."""

    code = "unsupported_format"
    http_status = 415


class InputTooLargeError(InvalidInputError):
    """The input is larger than the configured limits (bytes or voxels)."""

    code = "input_too_large"
    http_status = 413


class DicomSeriesError(InvalidInputError):
    """A DICOM series we refuse: one slice, uneven spacing, missing slices, gantry tilt."""

    code = "invalid_dicom_series"


class WarningRefusedError(InvalidInputError):
    """The input raised a warning whose code ``SWINXSEG_REFUSE_WARNINGS`` turns into a refusal."""

    code = "warning_refused"


class CheckpointError(SwinxsegError):
    """A checkpoint that cannot be loaded into the network (missing/unexpected/wrong-shape keys...)."""

    code = "invalid_checkpoint"
    exit_code = 3


class ModelArtifactError(SwinxsegError):
    """An exported model folder that is missing, incomplete or fails its checksums."""

    code = "invalid_model"
    exit_code = 3


class InferenceError(SwinxsegError):
    """Inference itself failed (out of memory even after the fallbacks, backend error)."""

    code = "inference_failed"
    exit_code = 4


class CaseCancelledError(SwinxsegError):
    """The case was cancelled (its job was deleted) between two sliding windows."""

    code = "cancelled"
    http_status = 409
    exit_code = 5


class DicomWebError(SwinxsegError):
    """A DICOMweb (QIDO/WADO/STOW-RS) exchange with a PACS that failed; the message names the server and step."""

    code = "dicomweb_error"
    http_status = 502
    exit_code = 6


class DicomWebUnavailableError(DicomWebError):
    """The DICOMweb server could not be reached or did not answer in time, after the bounded retries."""

    code = "dicomweb_unavailable"
    http_status = 503


class DicomWebNotFoundError(DicomWebError):
    """The study (or the series asked for) is not on the DICOMweb server (HTTP 404 or an empty QIDO-RS answer)."""

    code = "dicomweb_not_found"
    http_status = 404


class NoCtSeriesError(InvalidInputError):
    """The study holds no series the selection rule accepts (CT, not a localizer, axial)."""

    code = "no_ct_series"


class StowRefusedError(DicomWebError):
    """The destination refused the STOW-RS of our RTSTRUCT/SEG (HTTP error or a FailedSOPSequence)."""

    code = "stow_refused"
