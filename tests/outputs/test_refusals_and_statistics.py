"""DICOM outputs refused for inputs they cannot refer to; organ statistics against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_variants import organ_mask, write_variant

from service.errors import DicomSeriesError, InvalidInputError
from service.io.readers import read_volume
from service.labels import FLARE23_LABELS
from service.outputs.dicom_common import ModelInfo
from service.outputs.selection import check_outputs_possible, parse_outputs, write_outputs
from service.outputs.statistics import organ_statistics
from service.volume import Volume

MODEL = ModelInfo(name="swinxseg-test")


def test_parse_outputs():
    assert parse_outputs(None) == ("nifti",)
    assert parse_outputs("seg, nifti,rtstruct,seg") == ("nifti", "rtstruct", "seg")
    with pytest.raises(InvalidInputError, match="unknown output png"):
        parse_outputs("nifti,png")


def test_dicom_outputs_refused_for_nifti_input(tmp_path):
    ct = Volume(np.zeros((8, 8, 8), np.int16), np.eye(4), meta={"source_format": "nifti", "file_name": "x.nii.gz"})
    for kind in ("rtstruct", "seg"):
        with pytest.raises(InvalidInputError, match="needs a DICOM series input"):
            check_outputs_possible(ct, [kind])
    check_outputs_possible(ct, ["nifti"])


def test_blank_uid_series_refused_and_nothing_written(tmp_path, real_series_dir):
    ct = read_volume(real_series_dir, max_voxels=10**8)  # the real fixture: blank UIDs
    with pytest.raises(DicomSeriesError, match="blank SOP Instance UID"):
        check_outputs_possible(ct, ["rtstruct"])
    mask = ct.with_array(np.ones(ct.shape, np.uint8))
    with pytest.raises(DicomSeriesError):
        write_outputs(("nifti", "rtstruct", "seg"), ct, mask, FLARE23_LABELS, MODEL, stem=tmp_path / "case")
    assert list(tmp_path.iterdir()) == []


def test_tilted_and_oblique_series_refused(tmp_path, real_slices):
    crop = (slice(200, 232), slice(200, 232))
    tilted = write_variant(tmp_path / "tilted", real_slices, "head_first_supine", tilt_mm_per_slice=0.5, crop=crop)
    with pytest.raises(DicomSeriesError, match="gantry tilt"):
        read_volume(tilted, max_voxels=10**8)
    oblique = write_variant(tmp_path / "oblique", real_slices, "head_first_supine", oblique_deg=10, crop=crop)
    ct = read_volume(oblique, max_voxels=10**8)
    with pytest.raises(DicomSeriesError, match="oblique"):
        check_outputs_possible(ct, ["rtstruct"])
    check_outputs_possible(ct, ["seg"])  # SEG frames carry their own plane


def test_statistics_match_numpy_and_a_known_volume():
    spacing = (0.8, 0.9, 2.5)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-50.0, 20.0, 10.0)
    shape = (120, 110, 40)
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 15, shape).astype(np.float32)
    centre = np.array([60.0, 55.0, 20.0]) * spacing
    world = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"), -1)
    radius = 30.0
    ball = np.linalg.norm(world - centre, axis=-1) <= radius
    mask = np.where(ball, 1, 0).astype(np.uint8)
    mask[:5, :5, :5] = 4
    ct = Volume(hu, affine)
    stats = {s.label: s for s in organ_statistics(ct, ct.with_array(mask), FLARE23_LABELS)}
    assert set(stats) == {1, 4}
    liver = stats[1]
    assert liver.voxels == int(ball.sum())
    assert liver.volume_ml == pytest.approx(ball.sum() * np.prod(spacing) / 1000, rel=1e-6)
    assert liver.volume_ml == pytest.approx(4 / 3 * np.pi * radius**3 / 1000, rel=0.01)
    assert liver.mean_hu == pytest.approx(float(hu[ball].astype(np.float64).mean()), abs=1e-3)
    assert liver.median_hu == pytest.approx(float(np.median(hu[ball])), abs=1e-3)
    assert np.allclose(liver.centroid_ras_mm, centre + affine[:3, 3], atol=0.05)
    assert np.allclose(stats[4].bbox_min_ras_mm, affine[:3, 3]) and np.allclose(
        stats[4].bbox_max_ras_mm, affine[:3, 3] + 4 * np.array(spacing))


def test_statistics_on_a_dicom_series_are_in_ras(tmp_path, real_slices):
    folder = write_variant(tmp_path / "prone", real_slices, "prone", crop=(slice(200, 264), slice(200, 264)))
    ct = read_volume(folder, max_voxels=10**8)
    mask = ct.with_array(organ_mask(ct.shape, ct.affine))
    liver = organ_statistics(ct, mask, FLARE23_LABELS)[0]
    index = np.argwhere(mask.array == 1).mean(axis=0)
    assert np.allclose(liver.centroid_ras_mm, ct.affine[:3, :3] @ index + ct.affine[:3, 3], atol=1e-3)
