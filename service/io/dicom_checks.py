"""DICOM series rules that decide between "one volume" and a refusal, on header values alone.

The tags come from GDCM (through SimpleITK's ``GDCMImageIO``, which also decodes the pixels,
JPEG 2000 included), so no second DICOM parser is needed. Three rules live here:

- **One reconstruction.** A scanner may store two reconstructions of one acquisition (a smooth
  and a sharp kernel, often offset by half a slice) under one SeriesInstanceUID. Slices are
  grouped by SeriesInstanceUID, SeriesNumber, ConvolutionKernel and SliceThickness; more than
  one group is refused with the groups listed. Reconstructions that share all four are still
  caught when an (AcquisitionNumber, InstanceNumber) pair repeats. Acquisition and content
  times are not used: they legitimately change from slice to slice.
- **In-plane spacing.** PixelSpacing (0028,0030) is required; GDCM silently assumes 1 mm
  without it. When it is absent, ImagerPixelSpacing (0018,1164) is used with a warning;
  with neither, the series is refused.
- **Uniform slice positions.** Positions are decimal strings, often rounded to 0.01 mm, so a
  0.625 mm series has gaps of 0.62 and 0.63 mm. The series is uniform when every slice lies
  within ``max(0.02 mm, 1 % of the step)`` of the straight grid from the first to the last
  slice (the grid SimpleITK builds), so no voxel is placed further off than that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from service.case_warnings import PIXEL_SPACING_SUBSTITUTED, CaseWarning
from service.errors import DicomSeriesError

_GRID_ABS_TOL_MM = 0.02
_GRID_REL_TOL = 0.01

# (tag, what people call it) of the attributes that tell reconstructions apart.
RECONSTRUCTION_TAGS = (
    ("0020|000e", "SeriesInstanceUID"),
    ("0020|0011", "series number"),
    ("0018|1210", "kernel"),
    ("0018|0050", "slice thickness"),
)


def reconstruction_key(tag: Callable[[str], str]) -> tuple[str, ...]:
    """The values of :data:`RECONSTRUCTION_TAGS` of one slice (``tag`` reads a header value)."""
    return tuple(_normalise(tag(key)) for key, _ in RECONSTRUCTION_TAGS)


def _normalise(value: str) -> str:
    value = value.strip().rstrip("\x00").strip()
    try:  # "3", "3.0" and "3 " are the same slice thickness or series number
        return f"{float(value):g}"
    except ValueError:
        return value


def check_one_reconstruction(keys: Sequence[tuple[str, ...]], name: str) -> None:
    """Refuse slices that belong to more than one reconstruction, naming each candidate.

    Raises:
        DicomSeriesError: listing every group as its distinguishing values and slice count.
    """
    counts = Counter(keys)
    if len(counts) <= 1:
        return
    differing = [i for i in range(len(RECONSTRUCTION_TAGS)) if len({key[i] for key in counts}) > 1]
    listing = ", ".join(f"{_describe(key, differing)} ({n} slices)" for key, n in sorted(counts.items()))
    raise DicomSeriesError(
        f"{name} holds {len(counts)} DICOM series: {listing}; send one series per folder or zip"
    )


def _describe(key: tuple[str, ...], differing: list[int]) -> str:
    if differing == [0]:
        return key[0] or "(blank SeriesInstanceUID)"
    parts = [f"{RECONSTRUCTION_TAGS[i][1]} {key[i] or '(blank)'}" for i in differing]
    return " ".join(parts)


def check_unique_instances(numbers: Sequence[tuple[str, str]], name: str) -> None:
    """Refuse a repeated non-blank (AcquisitionNumber, InstanceNumber): two image sets that the
    reconstruction tags could not tell apart.

    Raises:
        DicomSeriesError: naming the repeated numbers.
    """
    counts = Counter(pair for pair in numbers if pair[1])
    repeated = sorted((pair, n) for pair, n in counts.items() if n > 1)
    if repeated:
        (acquisition, instance), n = repeated[0]
        raise DicomSeriesError(
            f"{name}: {len(repeated)} InstanceNumbers occur more than once (e.g. instance {instance} of "
            f"acquisition {acquisition or '(blank)'}: {n} slices), so the folder holds more than one "
            "reconstruction under the same series tags; send one series per folder or zip"
        )


def pixel_spacing(tag: Callable[[str], str], rel: str, name: str) -> tuple[tuple[float, float], CaseWarning | None]:
    """(row spacing, column spacing) in mm from PixelSpacing, else ImagerPixelSpacing (warned).

    Raises:
        DicomSeriesError: neither tag holds two positive numbers.
    """
    for key, label in (("0028|0030", "PixelSpacing (0028,0030)"), ("0018|1164", "ImagerPixelSpacing (0018,1164)")):
        text = tag(key).strip().rstrip("\x00")
        if not text:
            continue
        values = _positive_pair(text, f"{name}: {rel} {label}")
        if key == "0028|0030":
            return values, None
        return values, CaseWarning(
            PIXEL_SPACING_SUBSTITUTED,
            f"{name}: PixelSpacing (0028,0030) is missing; the in-plane spacing "
            f"{values[0]:g} x {values[1]:g} mm was taken from ImagerPixelSpacing (0018,1164), which is "
            "measured at the detector and may differ from the patient plane",
        )
    raise DicomSeriesError(
        f"{name}: {rel} has no PixelSpacing (0028,0030) (nor ImagerPixelSpacing); the in-plane voxel "
        "size is unknown, so the mask could not be placed or sized"
    )


def _positive_pair(text: str, what: str) -> tuple[float, float]:
    try:
        values = [float(v) for v in text.split("\\")]
    except ValueError as exc:
        raise DicomSeriesError(f"{what} is not a pair of numbers: {text!r}") from exc
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DicomSeriesError(f"{what} should hold two positive numbers (mm), got {text!r}")
    return values[0], values[1]


def check_uniform_positions(heights: np.ndarray, name: str) -> None:
    """Slice positions along the normal (mm, sorted) must lie on a uniform grid (rule above).

    Raises:
        DicomSeriesError: "uneven slice spacing", with the range of the gaps and the worst slice.
    """
    gaps = np.diff(heights)
    step = (heights[-1] - heights[0]) / (len(heights) - 1)
    deviation = heights - (heights[0] + step * np.arange(len(heights)))
    tolerance = max(_GRID_ABS_TOL_MM, _GRID_REL_TOL * step)
    worst = int(np.argmax(np.abs(deviation)))
    if abs(deviation[worst]) > tolerance:
        raise DicomSeriesError(
            f"{name}: uneven slice spacing: gaps between slices range from {gaps.min():.3f} to "
            f"{gaps.max():.3f} mm; slice {worst + 1} lies {abs(deviation[worst]):.3f} mm off the uniform "
            f"{step:.4f} mm grid, at most {tolerance:.3f} mm is allowed"
        )
