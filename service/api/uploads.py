"""Reading the CT out of a request: raw body or multipart field ``file``, streamed under a size cap.

The body is read chunk by chunk and refused with 413 the moment it crosses ``max_upload_mb``
(and up front when ``Content-Length`` already says so), so an oversized upload is never
buffered whole. Multipart is parsed with python-multipart's streaming parser straight into
memory: the volume readers take bytes anyway, and no spool file is left to clean up.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.api.errors import BadRequestError
from service.errors import InputTooLargeError, UnsupportedFormatError

MULTIPART = "multipart/form-data"
# Raw-body media types we accept; the readers sniff the actual format from the bytes.
RAW_MEDIA_TYPES = frozenset(
    {
        "application/octet-stream",
        "application/gzip",
        "application/x-gzip",
        "application/zip",
        "application/x-zip-compressed",
    }
)
ACCEPTED_MEDIA_TYPES = RAW_MEDIA_TYPES | {MULTIPART}
FILE_FIELD = "file"
# Without a file name, a zip is a DICOM series and a gzip a .nii.gz: tell the reader so.
_FILENAME_HINTS = {
    "application/zip": "upload.zip",
    "application/x-zip-compressed": "upload.zip",
    "application/gzip": "upload.nii.gz",
    "application/x-gzip": "upload.nii.gz",
}
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip", ".gz", ".dcm")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Upload:
    """The uploaded bytes and what the client told us about them."""

    data: bytes
    filename: str | None
    media_type: str

    @property
    def reader_filename(self) -> str | None:
        return self.filename or _FILENAME_HINTS.get(self.media_type)

    @property
    def case_name(self) -> str:
        return case_name_of(self.filename)


def case_name_of(filename: str | None) -> str:
    """``"../x/Case 01.nii.gz"`` -> ``"Case_01"``: a safe base name for the mask file."""
    if not filename:
        return "case"
    name = PureWindowsPath(PurePosixPath(filename).name).name
    lowered = name.lower()
    for suffix in _VOLUME_SUFFIXES:
        if lowered.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _UNSAFE_NAME_CHARS.sub("_", name).strip("._") or "case"


def media_type_of(request: Request) -> str:
    """The request's media type, lower case, without parameters; octet-stream when absent (RFC 9110)."""
    raw = request.headers.get("content-type", "")
    return raw.split(";", 1)[0].strip().lower() or "application/octet-stream"


def check_media_type(media_type: str) -> None:
    if media_type not in ACCEPTED_MEDIA_TYPES:
        raise UnsupportedFormatError(
            f"unsupported media type {media_type!r}: send the CT as the raw body "
            f"(Content-Type application/octet-stream, application/gzip or application/zip) "
            f"or as multipart/form-data field '{FILE_FIELD}'"
        )


def _too_large(limit_bytes: int) -> InputTooLargeError:
    return InputTooLargeError(f"upload larger than the {limit_bytes // 2**20} MB limit (max_upload_mb)")


def check_content_length(request: Request, limit_bytes: int) -> None:
    """413 before reading anything when the client already declares a body over the limit."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise BadRequestError(f"Content-Length {declared!r} is not a number") from None
    if size > limit_bytes:
        raise _too_large(limit_bytes)


async def _limited(request: Request, limit_bytes: int) -> AsyncIterator[bytes]:
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit_bytes:
                raise _too_large(limit_bytes)
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise BadRequestError("the client disconnected before the upload was complete") from None


async def read_upload(request: Request, *, limit_bytes: int, filename: str | None = None) -> Upload:
    """Read the CT from ``request``; ``filename`` is the query/header hint for a raw body."""
    media_type = media_type_of(request)
    check_media_type(media_type)
    check_content_length(request, limit_bytes)
    if media_type == MULTIPART:
        data, part_name = await _read_multipart(request, limit_bytes)
        filename = part_name or filename
    else:
        chunks = [chunk async for chunk in _limited(request, limit_bytes)]
        data = b"".join(chunks)
        del chunks
    if not data:
        raise BadRequestError("the request carries no CT: the body (or its 'file' field) is empty")
    return Upload(data=data, filename=filename, media_type=media_type)


class _FileFieldCollector:
    """python-multipart callbacks that keep the data of field ``file`` and ignore other fields."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.filename: str | None = None
        self.found = False
        self._in_file = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._in_file = False
        self._disposition = b""

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") == FILE_FIELD.encode() and not self.found:
            self.found = self._in_file = True
            raw_name = options.get(b"filename")
            self.filename = raw_name.decode("utf-8", "replace") if raw_name else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.data.extend(data[start:end])


async def _read_multipart(request: Request, limit_bytes: int) -> tuple[bytes, str | None]:
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequestError("multipart/form-data without a boundary parameter")
    collector = _FileFieldCollector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in _limited(request, limit_bytes):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise BadRequestError(f"malformed multipart body: {exc}") from None
    if not collector.found:
        raise BadRequestError(f"multipart body has no '{FILE_FIELD}' field")
    return bytes(collector.data), collector.filename
