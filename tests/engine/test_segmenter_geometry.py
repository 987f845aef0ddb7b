"""The product's non-negotiable: masks land in the right world positions, on the input's grid.

A formula predictor (no network) labels voxels by intensity, so any misplaced, flipped or
shifted mask is the engine's fault. Volumes are stored RAS, LPS, flipped, oblique, anisotropic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import dice, intensity_logits, make_affine, phantom_in_world

from service.inference.predictors import FormulaPredictor
from service.segmenter import Segmenter
from service.settings import Settings
from service.volume import Volume

CASES = {
    "ras_1mm": dict(axcodes="RAS", spacing=(1.5, 1.5, 2.0)),
    "lps": dict(axcodes="LPS", spacing=(1.5, 1.5, 2.0)),
    "flipped_permuted": dict(axcodes="SLA", spacing=(2.0, 1.6, 1.4)),
    "oblique": dict(axcodes="RAS", spacing=(1.7, 1.7, 1.7), oblique_deg=20.0),
    "anisotropic": dict(axcodes="LPS", spacing=(0.7, 0.7, 5.0)),
}


def _shape_for(spacing) -> tuple[int, int, int]:
    # a ~240 x 180 x 130 mm field of view whatever the spacing: holds both structures, few windows
    extent = np.array([240.0, 180.0, 130.0])
    return tuple(int(v) for v in np.ceil(extent / np.asarray(spacing)))


def _segmenter(**overrides) -> Segmenter:
    predictor = FormulaPredictor(intensity_logits, out_channels=3, device=torch.device("cpu"))
    settings = Settings(sw_batch_size=2, **overrides)
    return Segmenter.from_predictor(settings, predictor)


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return _segmenter()


@pytest.mark.parametrize("name", list(CASES))
def test_mask_lands_in_world_position_with_input_geometry(segmenter, name):
    spec = CASES[name]
    spacing = spec["spacing"]
    shape = _shape_for(spacing)
    if spec["axcodes"] == "SLA":  # the permuted case: first axis S, so reorder the extent too
        shape = (shape[2], shape[0], shape[1])
    affine = make_affine(shape, spacing, axcodes=spec["axcodes"], oblique_deg=spec.get("oblique_deg", 0.0))
    hu, truth = phantom_in_world(shape, affine)
    volume = Volume(hu, affine)

    result = segmenter.segment(volume)

    assert result.mask.shape == volume.shape
    np.testing.assert_allclose(result.mask.affine, volume.affine, atol=1e-6)
    assert result.mask.array.dtype == np.uint8
    for label in (1, 2):
        score = dice(result.mask.array == label, truth == label)
        assert score >= 0.95, f"{name}: label {label} Dice {score:.3f}"
    assert result.metrics.windows_run > 0
    assert set(result.metrics.seconds) >= {"preprocess", "infer", "postprocess"}


def test_labels_are_not_mirrored(segmenter):
    """The centroid of each label stays where the truth has it, voxel for voxel (no mirroring)."""
    shape = (120, 100, 60)
    affine = make_affine(shape, (2.0, 2.0, 4.0), axcodes="LPS")
    hu, truth = phantom_in_world(shape, affine)
    result = segmenter.segment(Volume(hu, affine))
    centroid_mask = np.argwhere(result.mask.array == 1).mean(axis=0)
    centroid_truth = np.argwhere(truth == 1).mean(axis=0)
    np.testing.assert_allclose(centroid_mask, centroid_truth, atol=1.0)


def test_skipping_windows_outside_the_body_changes_nothing():
    shape = (180, 140, 80)
    affine = make_affine(shape, (1.3, 1.3, 1.6), axcodes="RAS")
    hu, _ = phantom_in_world(shape, affine)
    volume = Volume(hu, affine)
    with_skip = _segmenter(skip_empty_windows=True).segment(volume)
    without = _segmenter(skip_empty_windows=False).segment(volume)
    np.testing.assert_array_equal(with_skip.mask.array, without.mask.array)
    assert without.metrics.windows_skipped == 0
    assert with_skip.metrics.windows_run + with_skip.metrics.windows_skipped == without.metrics.windows_run
