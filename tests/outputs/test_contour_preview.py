"""``swinxseg preview CT RTSTRUCT OUT.png``: contours drawn where their organs are, in every
orientation of the series (placed by world coordinates, checked against the mask drawn by the
mask preview's own display rule), and refusals for files that are not this CT's structure set."""

from __future__ import annotations

import argparse

import matplotlib.image as mpimg
import numpy as np
import pydicom
import pytest
from dicom_variants import organ_mask, write_variant
from skimage.draw import polygon2mask

from service import preview_cli
from service.contour_preview import axial_contour_panels, read_rtstruct, render_contour_preview
from service.errors import InvalidInputError
from service.io.readers import read_volume
from service.labels import FLARE23_LABELS
from service.outputs.dicom_common import ModelInfo
from service.outputs.rtstruct import rtstruct_bytes
from service.preview import FIGURE_SIZE_PX, to_ras

MODEL = ModelInfo(name="swinxseg-test")
NAME_TO_LABEL = {name: label for label, name in FLARE23_LABELS.items()}


def _case(tmp_path, real_slices, variant):
    folder = write_variant(tmp_path / variant, real_slices, variant, crop=(slice(176, 304), slice(176, 304)))
    ct = read_volume(folder, max_voxels=10**8)
    mask = ct.with_array(organ_mask(ct.shape, ct.affine))
    rtstruct = tmp_path / f"{variant}_rtstruct.dcm"
    rtstruct.write_bytes(rtstruct_bytes(ct, mask, FLARE23_LABELS, MODEL))
    return folder, ct, mask, rtstruct


@pytest.mark.parametrize("variant", ["head_first_supine", "feet_first_supine", "prone", "column_negated"])
def test_contours_lie_on_their_organs_in_every_orientation(tmp_path, real_slices, variant):
    _, ct, mask, rtstruct = _case(tmp_path, real_slices, variant)
    _, rois = read_rtstruct(rtstruct)
    panels = axial_contour_panels(ct, rois, count=3)
    assert len(panels) == 3
    labels_ras, _ = to_ras(mask)
    names = {roi.number: roi.name for roi in rois}
    checked = 0
    for panel in panels:
        shown = labels_ras[::-1, ::-1, panel.index].T  # the mask preview's axial display rule
        for number, lines in panel.lines.items():
            label = NAME_TO_LABEL[names[number]]
            filled = np.zeros(shown.shape, bool)
            for line in lines:  # even-odd: a nested contour is a hole
                filled ^= polygon2mask(shown.shape, np.c_[line[:, 1], line[:, 0]])
            truth = shown == label
            if truth.sum() < 50:
                continue
            dice = 2 * (filled & truth).sum() / (filled.sum() + truth.sum())
            assert dice >= 0.9, f"{variant}: {names[number]} on slice {panel.index}: Dice {dice:.3f}"
            checked += 1
    assert checked >= 3


def test_the_png_shows_the_contours(tmp_path, real_slices):
    folder, ct, _, rtstruct = _case(tmp_path, real_slices, "feet_first_supine")
    out = render_contour_preview(ct, rtstruct, tmp_path / "contours.png", title="abdomen")
    image = mpimg.imread(out)[..., :3]
    assert (image.shape[1], image.shape[0]) == FIGURE_SIZE_PX
    _, rois = read_rtstruct(rtstruct)
    liver = next(roi for roi in rois if roi.name == FLARE23_LABELS[1])
    close = np.abs(image - np.asarray(liver.colour)).max(axis=-1) < 0.06
    assert close.sum() > 100, "the liver's contour colour is not drawn"

    args = argparse.Namespace(ct=folder, mask=rtstruct, out=tmp_path / "cli.png", title=None)
    assert preview_cli.run(args) == 0 and (tmp_path / "cli.png").stat().st_size > 10_000


def test_refused_for_another_frame_of_reference_or_a_non_rtstruct(tmp_path, real_slices):
    folder, ct, _, rtstruct = _case(tmp_path, real_slices, "head_first_supine")
    ds = pydicom.dcmread(rtstruct)
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = pydicom.uid.generate_uid()
    other = tmp_path / "other_rtstruct.dcm"
    ds.save_as(other)
    with pytest.raises(InvalidInputError, match="not the CT's"):
        render_contour_preview(ct, other, tmp_path / "x.png")
    a_ct_slice = next(folder.iterdir())
    with pytest.raises(InvalidInputError, match="not an RTSTRUCT"):
        render_contour_preview(ct, a_ct_slice, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
