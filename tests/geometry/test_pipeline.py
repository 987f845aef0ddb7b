import numpy as np
import pytest
import torch

from service.geometry import PreprocessSpec, preprocess, restore_labels
from service.volume import Volume

SHAPE = (128, 128, 24)  # at (0.7, 0.7, 5.0) mm: every layout holds a 44 mm ball around the centre
BODY_SEMI_AXES_MM = np.array((35.0, 25.0, 35.0))
ORGAN_CENTER_MM, ORGAN_RADIUS_MM = np.array((8.0, 0.0, 5.0)), 12.0
TABLE_Y_MM = (-48.0, -40.0)  # 15 mm of air under the body (posterior = -A)
# The table is above the body threshold (-500 HU), so only the largest-component rule drops it,
# and below the soft-tissue label threshold, so "thresholding the original" leaves it background.
HU = {"air": -1000, "body": 40, "organ": 200, "table": -200}
OPTIONS = dict(
    spec=PreprocessSpec(target_spacing_mm=(1.0, 1.0, 1.0), hu_window=(-250.0, 250.0)), body_threshold_hu=-500.0,
    body_margin_mm=5.0, device="cpu",
)


def _labels_from_scaled(image: torch.Tensor) -> torch.Tensor:
    """The 'identity segmentation': organ above 150 HU, soft tissue above 25 HU."""
    labels = torch.zeros(image.shape, dtype=torch.uint8)
    labels[image > (25 + 250) / 500] = 1
    labels[image > (150 + 250) / 500] = 2
    return labels


def _phantom_at(world: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, expected labels (0/1/2) and table mask at world points (..., 3) mm."""
    rel = world - center
    body = ((rel / BODY_SEMI_AXES_MM) ** 2).sum(-1) <= 1.0
    organ = np.linalg.norm(rel - ORGAN_CENTER_MM, axis=-1) <= ORGAN_RADIUS_MM
    table = (rel[..., 1] >= TABLE_Y_MM[0]) & (rel[..., 1] <= TABLE_Y_MM[1]) & (np.abs(rel[..., 0]) <= 42)
    hu = np.full(world.shape[:-1], HU["air"], dtype=np.int16)
    hu[table], hu[body], hu[organ] = HU["table"], HU["body"], HU["organ"]
    labels = np.zeros(world.shape[:-1], dtype=np.uint8)
    labels[body], labels[organ] = 1, 2
    return hu, labels, table


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _case(orientation_case, make_affine, world_coordinates):
    affine = make_affine(orientation_case)
    center = affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + affine[:3, 3]
    hu, labels, table = _phantom_at(world_coordinates(affine, SHAPE), center)
    return Volume(hu, affine), labels, table, center


def test_identity_segmentation_comes_back_on_the_input_grid(orientation_case, make_affine, world_coordinates):
    volume, expected, _, _ = _case(orientation_case, make_affine, world_coordinates)
    prepared = preprocess(volume, **OPTIONS)
    assert prepared.image.dtype == torch.float32
    assert 0.0 <= float(prepared.image.min()) and float(prepared.image.max()) <= 1.0

    restored = restore_labels(_labels_from_scaled(prepared.image), prepared.record)
    assert restored.shape == volume.shape and restored.dtype == np.uint8
    for label in (1, 2):
        assert _dice(restored == label, expected == label) >= 0.97, label


@pytest.mark.parametrize("crop_to", ["body", "foreground"])
def test_table_is_cropped_away_or_masked(orientation_case, make_affine, world_coordinates, crop_to):
    volume, _, _, center = _case(orientation_case, make_affine, world_coordinates)
    prepared = preprocess(volume, **(OPTIONS | {"crop_to": crop_to}))
    record, body = prepared.record, prepared.body
    _, _, table = _phantom_at(world_coordinates(record.resampled_affine, record.resample.shape_out), center)
    box = record.crop_box
    in_box = np.zeros_like(table)
    in_box[box.slices] = True
    assert table.sum() > 0
    if crop_to == "foreground":
        assert (table & in_box).any()  # the reference pipeline's box: the table is in it
    elif orientation_case != "oblique":  # a tilted slab always reaches into an axis-aligned box
        assert not (table & in_box).any()
    # Whatever part of the table is in the box, no window there counts as touching the body.
    for voxel in np.argwhere(table & in_box)[::7]:
        local = voxel - np.array(box.start)
        assert not body.touches(tuple(local), tuple(local + 1)), voxel


def test_preprocessed_voxels_sit_where_their_affine_says(orientation_case, make_affine, world_coordinates):
    """Inside the body the HU are a linear function of world position, which linear resampling
    reproduces exactly: each preprocessed voxel must hold the value at its own world point."""
    affine = make_affine(orientation_case)
    center = affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + affine[:3, 3]

    def ramp_phantom(world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel = world - center
        ramp = rel @ np.array([2.0, -1.5, 1.0])  # HU, within +-150 inside the body
        hu = np.where(((rel / BODY_SEMI_AXES_MM) ** 2).sum(-1) <= 1.0, ramp, HU["air"])
        # Deeper than one input voxel (5 mm) inside: the interpolation saw only body voxels.
        interior = ((rel / (BODY_SEMI_AXES_MM - 8.0)) ** 2).sum(-1) <= 1.0
        return hu.astype(np.float32), interior

    hu, _ = ramp_phantom(world_coordinates(affine, SHAPE))
    prepared = preprocess(Volume(hu, affine), **OPTIONS)
    record = prepared.record
    assert record.cropped_shape == tuple(prepared.image.shape)
    expected, interior = ramp_phantom(world_coordinates(record.cropped_affine, record.cropped_shape))
    assert interior.sum() > 10_000
    np.testing.assert_allclose(prepared.image.numpy()[interior], (expected[interior] + 250) / 500, atol=1e-4)


def test_int16_and_float64_inputs_give_the_same_image(make_affine, world_coordinates):
    volume, _, _, _ = _case("lps", make_affine, world_coordinates)
    from_int16 = preprocess(volume, **OPTIONS).image
    as_float64 = Volume(volume.array.astype(np.float64), volume.affine)
    torch.testing.assert_close(preprocess(as_float64, **OPTIONS).image, from_int16)


def test_the_callers_array_is_never_written():
    array = np.full((20, 20, 20), 40.0, dtype=np.float32)  # all body, already 1 mm RAS: no copy needed
    prepared = preprocess(Volume(array, np.eye(4)), **OPTIONS)
    assert prepared.record.crop_box.shape == (20, 20, 20)
    assert (array == 40.0).all()
    assert torch.allclose(prepared.image, torch.tensor((40.0 + 250) / 500))


def test_restore_labels_takes_tensors_and_checks_the_shape(make_affine, world_coordinates):
    volume, _, _, _ = _case("oblique", make_affine, world_coordinates)
    prepared = preprocess(volume, **OPTIONS)
    labels = _labels_from_scaled(prepared.image)
    np.testing.assert_array_equal(
        restore_labels(labels.to(torch.int64), prepared.record), restore_labels(labels.numpy(), prepared.record)
    )
    with pytest.raises(ValueError, match="preprocessed image shape"):
        restore_labels(labels[:-1], prepared.record)


def test_sheared_affine_is_reported(caplog):
    affine = np.eye(4)
    affine[0, 1] = 0.3  # voxel axis j leans into x: not a rotation
    with caplog.at_level("WARNING", logger="service.geometry.pipeline"):
        preprocess(Volume(np.full((12, 12, 12), 40, dtype=np.int16), affine), **OPTIONS)
    assert "shear" in caplog.text
