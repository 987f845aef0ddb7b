"""The streaming slab stitcher: exact on formula predictors, equal to MONAI, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.inference.predictors import FormulaPredictor
from service.inference.stitcher import StitchOutOfMemory, sliding_window_labels, stream_axis
from service.inference.windows import window_grid

ROI = (16, 16, 16)


def plus_one(channels: int) -> FormulaPredictor:
    """Channel c predicts x + 1 + c: the stitched scores are known exactly."""
    offsets = torch.arange(channels, dtype=torch.float32).view(1, channels, 1, 1, 1)
    return FormulaPredictor(lambda x: x + 1 + offsets, channels)


def banded(n_bands: int) -> FormulaPredictor:
    """Logit c = -(x - centre_c)^2: the label is the intensity band of the voxel."""
    centres = ((torch.arange(n_bands, dtype=torch.float32) + 0.5) / n_bands).view(1, n_bands, 1, 1, 1)
    return FormulaPredictor(lambda x: -((x - centres) ** 2), n_bands)


def banded_image(shape: tuple[int, ...], n_bands: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Intensities well inside their bands (no ties), and the direct per-voxel labels."""
    rng = np.random.default_rng(seed)
    bands = rng.integers(0, n_bands, size=shape)
    image = (bands + rng.uniform(0.1, 0.9, size=shape)) / n_bands
    return torch.from_numpy(image.astype(np.float32)), bands.astype(np.uint8)


SHAPES = [(16, 16, 16), (10, 12, 9), (40, 33, 50), (16, 40, 7), (21, 9, 45), (1, 17, 33)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_plus_one_scores_are_exact(shape: tuple[int, int, int], channels: int) -> None:
    image = torch.rand(shape)
    result = sliding_window_labels(image, plus_one(channels), roi=ROI, output="scores", sw_batch_size=3)
    expected = image.numpy()[None] + 1 + np.arange(channels).reshape(-1, 1, 1, 1)
    assert result.scores.shape == (channels, *shape) and result.scores.dtype == np.float32
    np.testing.assert_allclose(result.scores, expected, atol=1e-5, rtol=0)
    assert result.labels is None
    assert result.windows_run == len(window_grid(shape, ROI, 0.5)) and result.windows_skipped == 0


@pytest.mark.parametrize("roi", [(32, 32, 32), (8, 12, 5)])
def test_plus_one_any_roi(roi: tuple[int, int, int]) -> None:
    image = torch.rand((36, 20, 41))
    result = sliding_window_labels(image, plus_one(2), roi=roi, overlap=0.25, output="scores")
    expected = image.numpy()[None] + 1 + np.arange(2).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(result.scores, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("accumulate_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(40, 33, 50), (10, 12, 9)])
def test_labels_equal_direct_labelling(shape: tuple[int, int, int], accumulate_dtype: torch.dtype) -> None:
    image, expected = banded_image(shape, 5)
    result = sliding_window_labels(
        image, banded(5), roi=ROI, sw_batch_size=2, accumulate_dtype=accumulate_dtype
    )
    assert result.labels.dtype == np.uint8 and result.labels.shape == shape
    np.testing.assert_array_equal(result.labels, expected)


def test_numpy_image_and_batch_size_do_not_change_labels() -> None:
    image, expected = banded_image((30, 18, 37), 4, seed=1)
    one = sliding_window_labels(image.numpy(), banded(4), roi=ROI, sw_batch_size=1)
    many = sliding_window_labels(image, banded(4), roi=ROI, sw_batch_size=7)
    np.testing.assert_array_equal(one.labels, expected)
    np.testing.assert_array_equal(many.labels, expected)
    assert many.sw_batch_size_used == 7 and many.fallbacks == []


def test_on_slab_reports_contiguous_spans_covering_z() -> None:
    spans: list[tuple[int, int]] = []
    sliding_window_labels(
        torch.rand((20, 20, 70)), plus_one(2), roi=ROI, on_slab=lambda a, b: spans.append((a, b))
    )
    assert spans[0][0] == 0 and spans[-1][1] == 70
    assert all(prev[1] == nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False))
    assert all(b - a <= ROI[2] for a, b in spans)


class BoxBody:
    """The body is a box of voxels; ``touches`` is box intersection."""

    def __init__(self, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> None:
        self.lo, self.hi = lo, hi

    def touches(self, start, stop) -> bool:
        return all(s < h and e > lo for s, e, lo, h in zip(start, stop, self.lo, self.hi, strict=True))


@pytest.mark.parametrize(
    ("shape", "lo", "hi"),
    [((48, 40, 64), (12, 10, 20), (30, 26, 41)), ((64, 40, 30), (20, 10, 5), (41, 26, 22))],
    ids=["along-z", "along-x"],
)
def test_skipping_windows_outside_the_body_changes_nothing(shape, lo, hi) -> None:
    image, bands = banded_image(shape, 4)
    inside = np.zeros(shape, dtype=bool)
    inside[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    image[~torch.from_numpy(inside)] = 0.0  # air outside the body
    n_bands = 5  # label 0 = background, 1..4 = bands inside the body
    centres = ((torch.arange(n_bands - 1, dtype=torch.float32) + 0.5) / (n_bands - 1)).view(1, -1, 1, 1, 1)

    def body_aware(x: torch.Tensor) -> torch.Tensor:
        # Background wins where the intensity is exactly air, the bands elsewhere.
        background = torch.where(x == 0, 10.0, -10.0)
        return torch.cat([background, -((x - centres) ** 2)], dim=1)

    predictor = FormulaPredictor(body_aware, n_bands)
    full = sliding_window_labels(image, predictor, roi=ROI)
    skipped = sliding_window_labels(image, predictor, roi=ROI, body=BoxBody(lo, hi))
    np.testing.assert_array_equal(skipped.labels, full.labels)
    np.testing.assert_array_equal(full.labels, np.where(inside, bands + 1, 0))
    total = len(window_grid(shape, ROI, 0.5))
    assert skipped.windows_skipped > 0
    assert skipped.windows_run + skipped.windows_skipped == total == full.windows_run


def test_all_windows_skipped_gives_background() -> None:
    result = sliding_window_labels(
        torch.rand((20, 20, 40)), plus_one(3), roi=ROI, body=BoxBody((0, 0, 0), (0, 0, 0))
    )
    assert result.windows_run == 0 and not result.labels.any()


def _windowed_nonlinear(x: torch.Tensor) -> torch.Tensor:
    """Nonlinear in x and dependent on the position inside the window, so blending matters."""
    ramp = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype).view(1, 1, 1, 1, -1)
    return torch.cat([torch.sin(3 * x) + ramp, x**2 - ramp * x, torch.tanh(x + ramp)], dim=1)


@pytest.mark.parametrize(
    ("shape", "roi", "axis"),
    [
        ((40, 36, 50), ROI, 2),
        ((50, 36, 40), ROI, 0),
        ((36, 50, 40), ROI, 1),
        ((50, 36, 40), (8, 16, 12), 0),
        ((30, 26, 44), (16, 8, 12), 2),
    ],
)
@pytest.mark.parametrize("overlap", [0.5, 0.25])
def test_scores_equal_monai_sliding_window_inference(overlap: float, shape, roi, axis: int) -> None:
    # The predictor depends on the position inside the window (a ramp along the window's Z), so a
    # window or its logits put back in the wrong axis order would show, whichever axis is streamed.
    inferers = pytest.importorskip("monai.inferers")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(shape, generator=generator)
    expected = inferers.sliding_window_inference(
        image[None, None], roi, 2, _windowed_nonlinear, overlap=overlap, mode="gaussian", sigma_scale=0.125
    )[0]
    result = sliding_window_labels(
        image,
        FormulaPredictor(_windowed_nonlinear, 3),
        roi=roi,
        overlap=overlap,
        output="scores",
        sw_batch_size=2,
    )
    assert result.stream_axis == axis
    np.testing.assert_allclose(result.scores, expected.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(9, 30, 12), (30, 20, 13), (7, 9, 5)])
def test_scores_equal_monai_when_smaller_than_roi(shape) -> None:
    # The predictor depends on the position inside the window (a ramp along Z), so a short axis
    # must be padded where MONAI pads it (centred, odd voxel last), not just anywhere.
    inferers = pytest.importorskip("monai.inferers")
    image = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    expected = inferers.sliding_window_inference(
        image[None, None], ROI, 1, _windowed_nonlinear, overlap=0.5, mode="gaussian"
    )[0]
    result = sliding_window_labels(image, FormulaPredictor(_windowed_nonlinear, 3), roi=ROI, output="scores")
    np.testing.assert_allclose(result.scores, expected.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("accumulate_dtype", [torch.float32, torch.float16])
def test_stitch_buffer_does_not_grow_with_scan_length(accumulate_dtype: torch.dtype) -> None:
    channels, x, y = 2, 32, 32
    itemsize = torch.empty((), dtype=accumulate_dtype).element_size()
    analytic = channels * x * y * ROI[2] * itemsize + x * y * ROI[2] * itemsize
    sizes = []
    for z in (200, 800):
        result = sliding_window_labels(
            torch.rand((x, y, z)),
            plus_one(channels),
            roi=ROI,
            sw_batch_size=16,
            accumulate_dtype=accumulate_dtype,
        )
        assert result.labels.shape == (x, y, z)
        assert (result.labels == channels - 1).all()  # the highest channel always wins for x + 1 + c
        sizes.append(result.stitch_buffer_bytes)
    assert sizes[0] == sizes[1] == analytic


def test_the_slab_moves_along_the_longest_axis() -> None:
    # A short, wide volume streams along X: its slab spans Y x Z x Rx, not X x Y x Rz.
    channels, itemsize = 2, 4
    wide = sliding_window_labels(torch.rand((200, 32, 24)), plus_one(channels), roi=ROI, sw_batch_size=8)
    long = sliding_window_labels(torch.rand((24, 32, 200)), plus_one(channels), roi=ROI, sw_batch_size=8)
    assert (wide.stream_axis, long.stream_axis) == (0, 2)
    assert wide.labels.shape == (200, 32, 24) and (wide.labels == channels - 1).all()
    assert (
        wide.stitch_buffer_bytes == long.stitch_buffer_bytes == (channels + 1) * 32 * 24 * ROI[0] * itemsize
    )
    assert stream_axis((357, 297, 88), (96, 96, 96)) == 0
    assert stream_axis((300, 300, 300), (96, 96, 96)) == 2  # ties go to Z
    assert stream_axis((30, 200, 30), (96, 96, 96)) == 1


class OomAboveBatchOne:
    """Raises CUDA out-of-memory for batches larger than ``limit`` (like a capped GPU)."""

    def __init__(self, inner: FormulaPredictor, limit: int = 1) -> None:
        self.inner, self.limit = inner, limit
        self.out_channels, self.device, self.name = inner.out_channels, inner.device, "oom-test"
        self.batch_sizes: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(batch.shape[0])
        if batch.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return self.inner(batch)


def test_oom_halves_the_batch_and_stays_correct() -> None:
    image, expected = banded_image((30, 20, 40), 4)
    predictor = OomAboveBatchOne(banded(4))
    result = sliding_window_labels(image, predictor, roi=ROI, sw_batch_size=4)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.sw_batch_size_used == 1
    assert result.fallbacks == ["oom: sw_batch_size 4 -> 2", "oom: sw_batch_size 2 -> 1"]
    assert predictor.batch_sizes[:3] == [4, 2, 1] and set(predictor.batch_sizes[3:]) == {1}
    assert result.windows_run == len(window_grid((30, 20, 40), ROI, 0.5))


def test_oom_at_batch_one_raises_for_host_fallback() -> None:
    predictor = OomAboveBatchOne(plus_one(2), limit=0)
    with pytest.raises(StitchOutOfMemory) as info:
        sliding_window_labels(torch.rand((20, 20, 20)), predictor, roi=ROI, sw_batch_size=2)
    assert info.value.fallbacks[0] == "oom: sw_batch_size 2 -> 1"
    assert info.value.code == "stitch_out_of_memory"


def test_separate_accumulate_device() -> None:
    image, expected = banded_image((20, 20, 30), 3)
    result = sliding_window_labels(image, banded(3), roi=ROI, accumulate_device="cpu")
    np.testing.assert_array_equal(result.labels, expected)
    assert result.accumulate_device == "cpu"


@pytest.mark.parametrize(
    "kwargs",
    [{"roi": (16, 16)}, {"sw_batch_size": 0}, {"output": "probabilities"}, {"overlap": 1.0}],
)
def test_bad_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sliding_window_labels(torch.rand((20, 20, 20)), plus_one(1), **{"roi": ROI, **kwargs})


def test_two_dimensional_image_is_rejected() -> None:
    with pytest.raises(ValueError, match="X, Y, Z"):
        sliding_window_labels(torch.rand((20, 20)), plus_one(1), roi=ROI)


def test_oom_allocating_the_slab_raises_for_host_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.inference.stitcher as stitcher

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(stitcher, "_Slab", no_memory)
    with pytest.raises(StitchOutOfMemory) as info:
        sliding_window_labels(torch.rand((20, 20, 20)), plus_one(2), roi=ROI)
    assert info.value.fallbacks == ["oom: slab allocation on cpu failed"]
    assert info.value.__context__ is None  # no chained traceback pinning device tensors
