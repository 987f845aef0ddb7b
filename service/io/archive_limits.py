"""How many entries a zip holds, read from its end record before ``zipfile`` parses it.

``zipfile.ZipFile`` builds one Python object per central-directory entry, and reads as many as
fit in the directory's declared size whatever the entry count says. A 2 GB upload of empty
entries is ~25 million of them: minutes of CPU and gigabytes of memory before any count check
could run. So both figures of the end record are checked first: the entry count, and the
directory's size against ``max_members`` entries of at most ``MAX_DIRECTORY_BYTES_PER_ENTRY``.
"""

from __future__ import annotations

import struct
from pathlib import Path

from service.errors import InputTooLargeError, InvalidInputError

#: Central-directory bytes allowed per permitted entry (46 fixed + name + extra fields; a DICOM
#: file's entry is ~100-300 bytes).
MAX_DIRECTORY_BYTES_PER_ENTRY = 1024
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD_SIZE = 22
_MAX_COMMENT = 65535


def check_zip_directory(path: Path, name: str, max_members: int) -> None:
    """Refuse a zip whose end record declares more than ``max_members`` entries or a central
    directory larger than ``max_members * MAX_DIRECTORY_BYTES_PER_ENTRY`` bytes.

    Raises:
        InputTooLargeError: over either figure (HTTP 413).
        InvalidInputError: no end-of-central-directory record (not a zip, or truncated).
    """
    count, directory_bytes = _end_record(path, name)
    if count > max_members:
        raise InputTooLargeError(
            f"{name} holds {count:,} entries, more than the {max_members:,} allowed (max_zip_members)"
        )
    limit = max_members * MAX_DIRECTORY_BYTES_PER_ENTRY
    if directory_bytes > limit:
        raise InputTooLargeError(
            f"{name} has a {directory_bytes:,}-byte zip directory, more than the {limit:,} bytes allowed for "
            f"{max_members:,} entries (max_zip_members)"
        )


def _end_record(path: Path, name: str) -> tuple[int, int]:
    """(total entries, central directory size in bytes), zip64 end record included."""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        tail_start = max(0, size - _EOCD_SIZE - _MAX_COMMENT)
        fh.seek(tail_start)
        tail = fh.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) - at < _EOCD_SIZE:
            raise InvalidInputError(f"{name} is not a valid zip archive: no end-of-central-directory record")
        count, directory_bytes = struct.unpack("<HI", tail[at + 10 : at + 16])
        if count == 0xFFFF or directory_bytes == 0xFFFFFFFF:
            return _zip64_end_record(fh, tail, at, tail_start, name)
    return count, directory_bytes


def _zip64_end_record(fh, tail: bytes, at: int, tail_start: int, name: str) -> tuple[int, int]:
    locator = tail[at - 20 : at] if at >= 20 else b""
    if not locator.startswith(_EOCD64_LOCATOR):
        raise InvalidInputError(f"{name} is not a valid zip archive: zip64 end record locator missing")
    (offset,) = struct.unpack("<Q", locator[8:16])
    fh.seek(offset)
    record = fh.read(56)
    if len(record) < 56 or not record.startswith(b"PK\x06\x06"):
        raise InvalidInputError(f"{name} is not a valid zip archive: zip64 end record missing")
    count, directory_bytes = struct.unpack("<QQ", record[32:48])
    return count, directory_bytes
