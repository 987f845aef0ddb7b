"""Reading the CT out of a request: raw body or multipart field ``file``, streamed to disk under caps.

The body is read chunk by chunk straight into a private spool file (mode 0600) in the server's
work folder, so an upload costs one chunk of memory (tens of KB), not its size. It is refused
with 413 the moment it crosses ``max_upload_mb`` (and up front when ``Content-Length`` already
says so), and with 408 when it stalls or crawls (:mod:`service.api.upload_pace`). Multipart is
parsed with python-multipart's streaming parser, its ``file`` field written to the spool file.
Whatever ends a read early removes the spool file.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.api.errors import BadRequestError
from service.api.upload_pace import UploadPace
from service.errors import InputTooLargeError, UnsupportedFormatError
from service.io.cases import case_name

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
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Upload:
    """The uploaded file (spooled to ``path``, ``size`` bytes) and what the client told us about it.

    The spool file belongs to whoever holds the Upload: :meth:`discard` it (or use the Upload as
    a context manager), or move it (a job keeps it as its input file)."""

    path: Path
    filename: str | None
    media_type: str
    size: int = 0

    def discard(self) -> None:
        Path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()

    @property
    def reader_filename(self) -> str | None:
        return self.filename or _FILENAME_HINTS.get(self.media_type)

    @property
    def case_name(self) -> str:
        return case_name_of(self.filename)


def case_name_of(filename: str | None) -> str:
    """``"../x/Case 01_0000.nii.gz"`` -> ``"Case_01"``: the case name batch would give the file
    (:func:`service.io.cases.case_name` of the name's last part), made safe for a header and a
    file name (characters other than letters, digits, ``.``, ``_``, ``-`` become ``_``);
    ``"case"`` when nothing is left."""
    if not filename:
        return "case"
    name = PureWindowsPath(PurePosixPath(filename).name).name
    return _UNSAFE_NAME_CHARS.sub("_", case_name(name)).strip("._") or "case"


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


async def _limited(request: Request, limit_bytes: int, pace: UploadPace) -> AsyncIterator[bytes]:
    """The body's chunks, each wait bounded by ``pace``, the total by ``limit_bytes``."""
    received = 0
    stream = request.stream()
    try:
        while True:
            wait_s = pace.next_wait_s(received)
            waiting_since = time.monotonic()
            try:
                async with asyncio.timeout(wait_s):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise pace.timed_out(received, time.monotonic() - waiting_since) from None
            received += len(chunk)
            if received > limit_bytes:
                raise _too_large(limit_bytes)
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise BadRequestError("the client disconnected before the upload was complete") from None
    finally:
        await stream.aclose()


def _open_spool(spool_dir: Path) -> tuple[BinaryIO, Path]:
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=spool_dir)  # 0600
    return os.fdopen(fd, "wb"), Path(name)


async def read_upload(
    request: Request,
    *,
    limit_bytes: int,
    spool_dir: Path,
    pace: UploadPace | None = None,
    filename: str | None = None,
) -> Upload:
    """Stream the CT in ``request`` to a spool file in ``spool_dir``; ``filename`` is the
    query/header hint for a raw body.

    Raises:
        UnsupportedFormatError (415), InputTooLargeError (413), BadRequestError (400: empty,
        malformed multipart, client gone), UploadTimeoutError (408: stalled or too slow).
    """
    media_type = media_type_of(request)
    check_media_type(media_type)
    check_content_length(request, limit_bytes)
    pace = pace or UploadPace()
    out, path = _open_spool(spool_dir)
    try:
        with out:
            if media_type == MULTIPART:
                filename = await _read_multipart(request, limit_bytes, pace, out) or filename
            else:
                # Small synchronous writes: they land in the page cache in microseconds.
                async for chunk in _limited(request, limit_bytes, pace):
                    out.write(chunk)
            size = out.tell()
        if not size:
            raise BadRequestError("the request carries no CT: the body (or its 'file' field) is empty")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Upload(path=path, filename=filename, media_type=media_type, size=size)


class _FileFieldCollector:
    """python-multipart callbacks that write the data of field ``file`` to ``out`` and ignore
    other fields."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
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
            self.out.write(data[start:end])


async def _read_multipart(request: Request, limit_bytes: int, pace: UploadPace, out: BinaryIO) -> str | None:
    """Write field ``file`` to ``out``; returns the part's file name."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequestError("multipart/form-data without a boundary parameter")
    collector = _FileFieldCollector(out)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in _limited(request, limit_bytes, pace):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise BadRequestError(f"malformed multipart body: {exc}") from None
    if not collector.found:
        raise BadRequestError(f"multipart body has no '{FILE_FIELD}' field")
    return collector.filename
