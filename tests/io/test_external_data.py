"""Issue 15, finding 1: a header that names another file never makes the reader open it.

Every hostile header is built here, a few bytes each. Uploads are read only from their own
bytes; batch files may name a data file only inside their own folder, and only a regular file.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from service.errors import InputTooLargeError, InvalidInputError, UnsupportedFormatError
from service.io.readers import read_volume, read_volume_bytes


def mha_header(data_file: str, *, extra: str = "") -> bytes:
    return (
        "ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_UCHAR\n"
        f"{extra}ElementDataFile = {data_file}\n"
    ).encode()


def nrrd_header(field: str) -> bytes:
    return f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8 8 8\nencoding: raw\n{field}\n\n".encode()


def _no_hang(call, timeout: float = 20.0):
    """Run ``call`` in a thread; a reader blocked on a FIFO would fail this instead of the suite."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the reader blocked (it opened the named file)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.parametrize("target", ["/etc/passwd", "/dev/zero", "../../etc/passwd", "data.raw", "LIST"])
@pytest.mark.parametrize("filename", ["x.mha", "x.mhd", None])
def test_upload_metaimage_naming_another_file_is_refused(target: str, filename: str | None) -> None:
    with pytest.raises(UnsupportedFormatError, match="ElementDataFile") as info:
        read_volume_bytes(mha_header(target), filename=filename)
    assert "own bytes" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        # A decoy in another letter case must not hide the line MetaIO actually uses.
        mha_header("/etc/passwd", extra="elementdatafile = LOCAL\n"),
        mha_header("LOCAL", extra="ELEMENTDATAFILE = /etc/passwd\n"),
        b"ObjectType=Image\nNDims=3\nDimSize=8 8 8\nElementType=MET_UCHAR\nElementDataFile=/etc/passwd\n",
    ],
)
def test_upload_metaimage_spelling_tricks_are_refused(data: bytes) -> None:
    with pytest.raises(UnsupportedFormatError, match="ElementDataFile"):
        read_volume_bytes(data, filename="x.mha")


def test_upload_metaimage_naming_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedFormatError, match="ElementDataFile"):
        _no_hang(lambda: read_volume_bytes(mha_header(str(fifo)), filename="x.mha", work_dir=tmp_path))


@pytest.mark.parametrize(
    "field", ["data file: /etc/passwd", "datafile: /etc/passwd", "DATA FILE: x.raw", "data file: LIST"]
)
def test_upload_nrrd_with_detached_data_is_refused(field: str) -> None:
    with pytest.raises(UnsupportedFormatError, match="data file"):
        read_volume_bytes(nrrd_header(field), filename="x.nrrd")


def test_upload_inline_metaimage_still_reads() -> None:
    data = mha_header("LOCAL") + bytes(range(256)) * 2
    volume = read_volume_bytes(data, filename="x.mha")
    assert volume.shape == (8, 8, 8) and int(volume.array.max()) == 255


def test_upload_analyze_header_is_refused() -> None:
    # Analyze 7.5: a 348-byte header without a NIfTI magic; its voxels would be in a .img.
    header = (348).to_bytes(4, "little") + bytes(344)
    with pytest.raises(UnsupportedFormatError):
        read_volume_bytes(header, filename="scan.hdr")


# ----------------------------------------------------------------------------- batch files


def test_batch_mhd_with_its_raw_in_the_same_folder_reads(tmp_path: Path) -> None:
    (tmp_path / "case.raw").write_bytes(np.arange(512, dtype=np.uint8).tobytes())
    (tmp_path / "case.mhd").write_bytes(mha_header("case.raw"))
    assert read_volume(tmp_path / "case.mhd").shape == (8, 8, 8)


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.raw", "sub/../../outside.raw"])
def test_batch_header_pointing_outside_its_folder_is_refused(tmp_path: Path, target: str) -> None:
    case_dir = tmp_path / "cases"
    case_dir.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(512))
    (case_dir / "case.mhd").write_bytes(mha_header(target))
    with pytest.raises(InvalidInputError, match="outside the case's folder"):
        read_volume(case_dir / "case.mhd")
    (case_dir / "case.nhdr").write_bytes(nrrd_header(f"data file: {target}"))
    with pytest.raises(InvalidInputError, match="outside the case's folder"):
        read_volume(case_dir / "case.nhdr")


def test_batch_symlink_leading_out_is_refused(tmp_path: Path) -> None:
    case_dir = tmp_path / "cases"
    case_dir.mkdir()
    (tmp_path / "secret.raw").write_bytes(bytes(512))
    (case_dir / "case.raw").symlink_to(tmp_path / "secret.raw")
    (case_dir / "case.mhd").write_bytes(mha_header("case.raw"))
    with pytest.raises(InvalidInputError, match="link leading outside"):
        read_volume(case_dir / "case.mhd")


def test_batch_header_naming_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "case.raw")
    (tmp_path / "case.mhd").write_bytes(mha_header("case.raw"))
    with pytest.raises(InvalidInputError, match="not a regular file"):
        _no_hang(lambda: read_volume(tmp_path / "case.mhd"))


def test_batch_missing_data_file_and_patterns_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.mhd").write_bytes(mha_header("nothere.raw"))
    with pytest.raises(InvalidInputError, match="cannot be opened"):
        read_volume(tmp_path / "a.mhd")
    (tmp_path / "b.mhd").write_bytes(mha_header("slice%03d.raw 1 8 1"))
    with pytest.raises(UnsupportedFormatError, match="list or pattern"):
        read_volume(tmp_path / "b.mhd")


# ----------------------------------------------------------------------------- zip entry count


def _zip_of_empty_entries(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(count):
            archive.writestr(f"{i}", b"")
    return buffer.getvalue()


def test_zip_with_too_many_entries_is_refused_before_extraction(tmp_path: Path) -> None:
    from service.io.readers import read_volume_upload

    path = tmp_path / "upload.bin"
    path.write_bytes(_zip_of_empty_entries(300))
    with pytest.raises(InputTooLargeError, match=r"300 entries, more than the 100 allowed"):
        read_volume_upload(path, filename="s.zip", max_zip_members=100, work_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.bin"]  # nothing extracted, nothing left


def test_zip_whose_end_record_understates_its_directory_is_refused(tmp_path: Path) -> None:
    data = bytearray(_zip_of_empty_entries(300))
    at = data.rfind(b"PK\x05\x06")
    data[at + 8 : at + 12] = (1).to_bytes(2, "little") * 2  # "1 entry" on this disk and in total
    path = tmp_path / "lying.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(InputTooLargeError, match="max_zip_members"):
        read_volume(path, max_zip_members=100)
