import logging

import numpy as np
import pytest
import torch

from service.geometry import BodyMask, CropBox, body_bounding_box, crop, uncrop_labels

SHAPE = (96, 80, 64)
CENTER = np.array((48.0, 46.0, 32.0))
SEMI_AXES = np.array((35.0, 22.0, 28.0))
TABLE_ROWS = (8, 14)  # along A (axis 1), 10 voxels of air below the body's lowest row (24)
MARGIN_MM = 5.0


def _phantom() -> tuple[torch.Tensor, np.ndarray]:
    """1 mm HU volume: soft-tissue ellipsoid, bone-bright table slab under it, air elsewhere."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), -1)
    body = (((index - CENTER) / SEMI_AXES) ** 2).sum(-1) <= 1.0
    image = np.full(SHAPE, -1000.0, dtype=np.float32)
    image[body] = 40.0
    image[:, TABLE_ROWS[0] : TABLE_ROWS[1], :] = 300.0
    return torch.from_numpy(image), body


def _find(image, **overrides):
    options = dict(threshold=-500.0, spacing_mm=(1.0, 1.0, 1.0), margin_mm=MARGIN_MM) | overrides
    return body_bounding_box(image, **options)


def test_table_falls_away_and_the_body_is_kept_whole_with_its_margin():
    image, body = _phantom()
    box, _ = _find(image)
    hits = [np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    for axis in range(3):
        wanted_start = max(0, hits[axis][0] - int(MARGIN_MM))
        wanted_stop = min(SHAPE[axis], hits[axis][-1] + 1 + int(MARGIN_MM))
        # Measured at full resolution inside the kept component: exact, not coarse.
        assert (box.start[axis], box.stop[axis]) == (wanted_start, wanted_stop)
    assert box.start[1] >= TABLE_ROWS[1]


def test_foreground_box_keeps_the_table_like_crop_foreground_and_the_mask_still_skips_it():
    image, body = _phantom()
    box, mask = _find(image, threshold=-250.0, margin_mm=0.0, box_of="foreground")
    # MONAI's CropForeground box: every voxel above the threshold, table included, no margin.
    above = image.numpy() > -250.0
    for axis in range(3):
        hits = np.flatnonzero(above.any(axis=tuple(a for a in range(3) if a != axis)))
        assert (box.start[axis], box.stop[axis]) == (hits[0], hits[-1] + 1)
    assert box.start[1] == TABLE_ROWS[0]
    # The body mask is the same as for the body box: the table's rows alone are not body.
    table_only = ((0, 0, 0), (box.shape[0], TABLE_ROWS[1] - TABLE_ROWS[0], box.shape[2]))
    assert not mask.touches(*table_only)
    body_box, body_mask = _find(image, threshold=-250.0, margin_mm=0.0)
    assert body_box.start[1] >= TABLE_ROWS[1] and np.array_equal(mask.coarse, body_mask.coarse)
    with pytest.raises(ValueError, match="box_of must be one of"):
        _find(image, box_of="table")


def test_body_mask_is_conservative_and_skips_empty_space():
    image, body = _phantom()
    box, mask = _find(image)
    body_cropped = body[box.slices]
    rng = np.random.default_rng(4)
    touched = []
    for _ in range(300):
        size = rng.integers(4, 24, size=3)
        start = rng.integers(-8, np.array(box.shape) - 2, size=3)
        stop = start + size
        inside = body_cropped[tuple(slice(max(0, a), max(0, b)) for a, b in zip(start, stop, strict=True))]
        touches = mask.touches(tuple(start), tuple(stop))
        if inside.any():
            assert touches, (start, stop)
        touched.append(touches)
    assert not all(touched)  # some windows in the air around the body are skipped
    assert not mask.touches((0, 0, 0), (6, 6, 6))  # a corner of the box, outside the ellipsoid
    assert mask.touches(tuple(np.array(box.shape) // 2), tuple(np.array(box.shape) // 2 + 1))


def test_empty_mask_keeps_the_whole_volume(caplog):
    image = torch.full((20, 21, 22), -1000.0)
    with caplog.at_level(logging.WARNING, logger="service.geometry.body"):
        box, mask = _find(image)
    assert box == CropBox.full((20, 21, 22))
    assert "no voxel above the body threshold" in caplog.text
    assert mask.touches((0, 0, 0), (1, 1, 1))


def test_anisotropic_spacing_uses_per_axis_coarse_steps_and_margins():
    image, _ = _phantom()
    # Pretend z is 5 mm: one coarse step along z, margin of 1 voxel there.
    box, mask = _find(image, spacing_mm=(1.0, 1.0, 5.0))
    assert mask.factors == (4, 4, 1)
    assert box.start[2] == 4 - 1 and box.stop[2] == 61 + 1


def test_crop_and_uncrop_round_trip():
    labels = np.random.default_rng(5).integers(1, 5, size=(10, 11, 12), dtype=np.uint8)
    box = CropBox((2, 3, 4), (9, 11, 10))
    cropped = crop(labels, box)
    assert cropped.shape == box.shape
    restored = uncrop_labels(cropped, box, labels.shape)
    expected = np.zeros_like(labels)
    expected[box.slices] = labels[box.slices]
    np.testing.assert_array_equal(restored, expected)
    tensor = uncrop_labels(torch.from_numpy(np.ascontiguousarray(cropped)), box, labels.shape)
    np.testing.assert_array_equal(tensor.numpy(), expected)


def test_crop_rejects_a_box_outside_the_volume():
    with pytest.raises(ValueError, match="does not fit"):
        crop(np.zeros((4, 4, 4)), CropBox((0, 0, 0), (5, 4, 4)))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("length", [9, 12, 17])
def test_voxel_range_is_exactly_the_voxels_of_the_marked_cells(k, length):
    rng = np.random.default_rng(k * 100 + length)
    cells = -(-length // k)
    for _ in range(20):
        coarse = np.zeros((cells, 1, 1), dtype=bool)
        coarse[rng.integers(0, cells, size=rng.integers(1, 3)), 0, 0] = True
        mask = BodyMask(coarse, (k, 1, 1), (0, 0, 0))
        voxel_cells = mask.cells(0, length, 0, torch.device("cpu")).numpy()
        marked = np.flatnonzero(coarse[voxel_cells, 0, 0])
        assert mask.voxel_range(0, length) == (marked[0], marked[-1] + 1)
