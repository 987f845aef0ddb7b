"""HU windowing: what MONAI ``ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)`` computes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from service.errors import InvalidInputError
from service.preprocess_spec import PAPER_HU_WINDOW


def scale_intensity(
    image: torch.Tensor, hu_window: Sequence[float] = PAPER_HU_WINDOW, *, inplace: bool = False
) -> torch.Tensor:
    """Clip ``image`` (HU, any shape) to ``hu_window = (low, high)`` and map it linearly to [0, 1].

    With ``inplace=True`` (float input only) no second copy of the volume is made: the caller's
    tensor is overwritten and returned. Integer input always yields a new float32 tensor.
    """
    low, high = (float(v) for v in hu_window)
    if not low < high:
        raise InvalidInputError(f"hu_window must be (low, high) with low < high, got {list(hu_window)}")
    if not image.is_floating_point():
        image, inplace = image.to(torch.float32), True
    out = image if inplace else image.clone()
    # Same operation order as MONAI ((x - a_min) / (a_max - a_min)), so values match bit for bit.
    return out.clamp_(low, high).sub_(low).div_(high - low)
