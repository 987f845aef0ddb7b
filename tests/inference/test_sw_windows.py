"""Window placement and gaussian weights match MONAI's sliding_window_inference exactly."""

from __future__ import annotations

import pytest
import torch

from service.inference.windows import gaussian_importance, window_grid, window_starts

monai_utils = pytest.importorskip("monai.data.utils")
monai_inferers = pytest.importorskip("monai.inferers")
from monai.inferers.utils import _get_scan_interval  # noqa: E402


def _monai_starts(size: int, roi: int, overlap: float) -> tuple[int, ...]:
    # MONAI pads an axis shorter than the ROI up to the ROI before placing windows.
    padded = (max(size, roi),)
    interval = _get_scan_interval(padded, (roi,), 1, (overlap,))
    slices = monai_utils.dense_patch_slices(padded, (roi,), interval)
    return tuple(s[0].start for s in slices)


@pytest.mark.parametrize("roi", [1, 7, 16, 32, 96])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.625, 0.9])
def test_window_starts_match_monai(roi: int, overlap: float) -> None:
    for size in range(1, 3 * roi + 5):
        assert window_starts(size, roi, overlap) == _monai_starts(size, roi, overlap), (size, roi, overlap)


def test_window_starts_examples() -> None:
    assert window_starts(96, 96, 0.5) == (0,)
    assert window_starts(50, 96, 0.5) == (0,)
    assert window_starts(200, 96, 0.5) == (0, 48, 96, 104)
    assert window_starts(40, 16, 0.5) == (0, 8, 16, 24)


@pytest.mark.parametrize("shape", [(40, 33, 50), (16, 16, 16), (37, 16, 20)])
def test_window_grid_matches_windows_monai_runs(shape: tuple[int, int, int]) -> None:
    roi = (16, 16, 16)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def recorder(x: torch.Tensor, coords) -> torch.Tensor:
        for c in coords:
            seen.append((tuple(s.start for s in c[2:]), tuple(s.stop for s in c[2:])))
        return x

    monai_inferers.sliding_window_inference(
        torch.zeros((1, 1, *shape)), roi, 4, recorder, overlap=0.5, with_coord=True
    )
    ours = window_grid(shape, roi, 0.5)
    assert sorted(ours) == sorted(seen)
    z_starts = [start[2] for start, _ in ours]
    assert z_starts == sorted(z_starts), "windows must come in ascending z order for streaming"


def test_window_grid_clips_stop_on_short_axes() -> None:
    grid = window_grid((10, 40, 5), (16, 16, 16), 0.5)
    assert {stop[0] for _, stop in grid} == {10}
    assert {stop[2] for _, stop in grid} == {5}


@pytest.mark.parametrize("roi", [(16, 16, 16), (32, 24, 16), (96, 96, 96), (5, 9, 2)])
@pytest.mark.parametrize("sigma", [0.125, 0.25])
def test_gaussian_matches_monai(roi: tuple[int, int, int], sigma: float) -> None:
    expected = monai_utils.compute_importance_map(roi, mode="gaussian", sigma_scale=sigma, device="cpu")
    ours = gaussian_importance(roi, sigma)
    assert ours.shape == roi and ours.dtype == torch.float32
    assert torch.equal(ours, expected)


def test_gaussian_is_cached_per_dtype() -> None:
    a = gaussian_importance((16, 16, 16), 0.125, device="cpu")
    assert gaussian_importance((16, 16, 16), 0.125, device=torch.device("cpu")) is a
    half = gaussian_importance((16, 16, 16), 0.125, dtype=torch.float16)
    assert half.dtype == torch.float16 and half is not a


@pytest.mark.parametrize(
    "call",
    [
        lambda: window_starts(10, 16, 1.0),
        lambda: window_starts(0, 16, 0.5),
        lambda: window_grid((10, 10), (16, 16, 16), 0.5),
        lambda: gaussian_importance((16, 16, 16), 0.0),
    ],
)
def test_bad_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()
