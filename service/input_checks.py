"""Is a decoded volume fit to segment? The HU plausibility rule and the refusal policy.

Both the batch runner and the HTTP service call :func:`screen_input` right after reading a
case, so every entry point warns and refuses alike.

HU plausibility rule (docs/SERVICE.md): a CT in Hounsfield units shows air, at about -1000 HU,
outside the body, in the lungs or bowel, or as the padding outside the scanner's field of view
(-1024, -2048, -3024). So the intensities look like HU when at least
``_MIN_AIR_FRACTION`` of the voxels are at or below ``_AIR_HU`` (-500). Intensities rescaled to
[0, 1] or [-1, 1], raw unsigned scanner values without their rescale (air at 0), MR and PET
signal all fail it; a CT cropped so tightly that no air is left fails it too, which is why it is
a warning by default rather than a refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import numpy as np

from service.case_warnings import INTENSITY_NOT_HU, CaseWarning, warnings_of, with_warnings
from service.errors import WarningRefusedError
from service.volume import Volume

log = logging.getLogger(__name__)

_AIR_HU = -500.0
_MIN_AIR_FRACTION = 0.0005  # 0.05 % of the voxels
_SAMPLE_STEP = 2  # every 2nd voxel per axis: 1/8 of the data decides, in 1/8 of the time


def screen_input(volume: Volume, *, refuse: Collection[str] = ()) -> Volume:
    """:func:`add_input_warnings`, then :func:`enforce_refusals`: the volume with every warning,
    or a refusal.

    Raises:
        WarningRefusedError: a warning's code is in ``refuse``.
    """
    screened = add_input_warnings(volume)
    enforce_refusals(screened, refuse)
    return screened


def add_input_warnings(volume: Volume) -> Volume:
    """``volume`` with the input checks' warnings added to the reader's (array not copied)."""
    extra = [w for w in (intensity_warning(volume),) if w is not None]
    for warning in extra:
        log.warning("%s", warning.message)
    return with_warnings(volume, extra) if extra else volume


def enforce_refusals(volume: Volume, refuse: Collection[str]) -> None:
    """Refuse the case when one of its warnings has a code in ``refuse``
    (``Settings.refuse_warnings``).

    Raises:
        WarningRefusedError: naming each such warning's code and message.
    """
    refused = [w for w in warnings_of(volume) if w.code in refuse]
    if refused:
        reasons = "; ".join(f"{w.code}: {w.message}" for w in refused)
        raise WarningRefusedError(f"refused because SWINXSEG_REFUSE_WARNINGS includes {reasons}")


def intensity_warning(volume: Volume) -> CaseWarning | None:
    """An ``intensity_not_hu`` warning when the voxels fail the HU plausibility rule, else None."""
    sample = volume.array[::_SAMPLE_STEP, ::_SAMPLE_STEP, ::_SAMPLE_STEP]
    air = int(np.count_nonzero(sample <= _AIR_HU))
    fraction = air / max(sample.size, 1)
    if fraction >= _MIN_AIR_FRACTION:
        return None
    name = volume.meta.get("file_name", "the input")
    lo, hi = float(sample.min()), float(sample.max())
    return CaseWarning(
        INTENSITY_NOT_HU,
        f"{name}: intensities do not look like CT in Hounsfield units: values range from {lo:.4g} to "
        f"{hi:.4g} and {100 * fraction:.3g} % of the voxels are at or below {_AIR_HU:.0f} HU (air is about "
        f"-1000 HU; a CT normally has at least {100 * _MIN_AIR_FRACTION:.2g} %); rescaled or non-CT "
        "intensities give a wrong mask",
    )
