"""Fixtures for the volume I/O tests: the real CT fixtures and a synthetic DICOM series builder."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
CT_DIR = SHARED / "data" / "ct"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@pytest.fixture(scope="session")
def ct_dir() -> Path:
    """The real CT fixtures (read in place, never copied into the project)."""
    if not (CT_DIR / "example_ct.nii.gz").is_file():
        pytest.skip(f"real CT fixtures not found at {CT_DIR}")
    return CT_DIR.resolve()


def write_dicom_series(
    folder: Path,
    positions: Sequence[Sequence[float]],
    *,
    orientation: Sequence[float] = AXIAL,
    size: tuple[int, int] = (16, 16),
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    series_uid: str | Sequence[str] = "",
    rescale_intercept: float | Sequence[float] = -1024.0,
    sizes: dict[int, tuple[int, int]] | None = None,
    orientations: dict[int, Sequence[float]] | None = None,
    slice_thickness: float = 5.0,
    seed: int = 0,
    extra_tags: dict[str, str] | None = None,
    modality: str = "CT",
) -> np.ndarray:
    """Write one single-slice CT DICOM file per position (LPS mm), in shuffled file-name order.

    ``size`` is (columns, rows); ``pixel_spacing`` is (x, y) = (column, row) spacing in mm.
    ``sizes``/``orientations`` override single slices (by position index) to build bad series.
    ``extra_tags`` ("gggg|eeee" -> value) are set on every slice (e.g. a kernel, a series number).
    SliceThickness is deliberately different from the real gap so readers must use positions.

    Returns the HU values written, stacked as (slice, row, column) in position order; slice k
    holds ``100 * k + row + column`` minus 1000, so each slice is recognisable.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"IM{n:04d}.dcm" for n in range(len(positions))]
    random.Random(seed).shuffle(names)  # file names must not give the order away
    values = []
    for k, position in enumerate(positions):
        cols, rows = (sizes or {}).get(k, size)
        hu = (np.add.outer(np.arange(rows), np.arange(cols)) + 100 * k - 1000).astype(np.int16)
        values.append(hu)
        image = sitk.GetImageFromArray(hu)
        image.SetSpacing(pixel_spacing)
        tags = {
            "0008|0016": CT_IMAGE_STORAGE,
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.{seed}.{k}",
            "0008|0060": modality,
            "0018|0050": str(slice_thickness),
            "0020|000e": series_uid if isinstance(series_uid, str) else series_uid[k],
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.8f}" for v in (orientations or {}).get(k, orientation)),
            "0028|1052": str(
                rescale_intercept if isinstance(rescale_intercept, float | int) else rescale_intercept[k]
            ),
            "0028|1053": "1",
        }
        for key, value in {**tags, **(extra_tags or {})}.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / names[k]))
        writer.Execute(image)
    if sizes:
        return np.empty(0)
    return np.stack(values)


def retag_pixel_spacing(folder: Path, new_tag: tuple[int, int]) -> None:
    """Move PixelSpacing (0028,0030) of every file in ``folder`` to ``new_tag`` (same VR, DS).

    GDCM writes implicit-VR little-endian data sets, so the element starts with the 4 tag bytes;
    (0028,0031) removes PixelSpacing, (0018,1164) turns it into ImagerPixelSpacing."""
    old = (0x0028).to_bytes(2, "little") + (0x0030).to_bytes(2, "little")
    new = new_tag[0].to_bytes(2, "little") + new_tag[1].to_bytes(2, "little")
    for path in folder.iterdir():
        data = path.read_bytes()
        at = data.find(old, 132 + 200)  # after the preamble and the (explicit VR) file meta group
        assert at > 0, f"no PixelSpacing in {path}"
        path.write_bytes(data[:at] + new + data[at + 4 :])


def axial_positions(z_values: Sequence[float], *, x: float = -10.0, y: float = -20.0) -> list[tuple]:
    """Slice origins (LPS mm) of an untilted axial series at the given z."""
    return [(x, y, float(z)) for z in z_values]


@pytest.fixture
def dicom_series() -> Callable[..., np.ndarray]:
    """The :func:`write_dicom_series` builder."""
    return write_dicom_series


@pytest.fixture
def axial() -> Callable[..., list[tuple]]:
    """The :func:`axial_positions` helper."""
    return axial_positions


@pytest.fixture
def retag_spacing() -> Callable[[Path, tuple[int, int]], None]:
    """The :func:`retag_pixel_spacing` helper."""
    return retag_pixel_spacing
