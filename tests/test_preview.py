"""The PNG preview: fixed size, radiological left/right, legend, and the CLI."""

from __future__ import annotations

import argparse
from functools import cache

import matplotlib.image as mpimg
import numpy as np
import pytest

from phantoms.generator import make_phantom
from service.errors import InvalidInputError
from service.preview import FIGURE_SIZE_PX, PANEL_RECTS, build_figure, oriented_panels, render_preview
from service.volume import Volume

COARSE = (3.0, 3.0, 3.0)  # mm: a cheap phantom is enough to check orientation


@cache
def coarse_phantom(orientation: str = "RAS") -> tuple[Volume, Volume]:
    return make_phantom(seed=0, spacing=COARSE, orientation=orientation)


def test_writes_png_of_the_documented_size(tmp_path):
    ct, labels = coarse_phantom()
    out = render_preview(ct, labels, tmp_path / "sub" / "case_preview.png", title="case")
    assert out == tmp_path / "sub" / "case_preview.png" and out.exists()
    height, width = mpimg.imread(out).shape[:2]
    assert (width, height) == FIGURE_SIZE_PX


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_axial_panel_shows_the_patient_right_on_the_image_left(orientation):
    ct, labels = coarse_phantom(orientation)
    axial = oriented_panels(ct, labels)["axial"]
    cols = np.arange(axial.labels.shape[1])
    liver_col = cols[np.nonzero(axial.labels == 1)[1]].mean()
    spleen_col = cols[np.nonzero(axial.labels == 3)[1]].mean()
    assert liver_col < axial.labels.shape[1] / 2 < spleen_col
    rows = np.arange(axial.labels.shape[0])
    kidney_row = rows[np.nonzero(axial.labels == 2)[0]].mean()
    pancreas_row = rows[np.nonzero(axial.labels == 4)[0]].mean() if (axial.labels == 4).any() else None
    body_rows = np.nonzero((axial.ct > -500).any(axis=1))[0]
    assert kidney_row > body_rows.mean()  # posterior (kidneys) at the bottom
    if pancreas_row is not None:
        assert pancreas_row < kidney_row


def test_r_marker_and_drawn_liver_are_on_the_same_side(tmp_path):
    ct, labels = coarse_phantom("LPS")  # stored mirrored: the preview must still put R on the left
    liver_only = labels.with_array((labels.array == 1).astype(np.uint8))
    fig = build_figure(ct, liver_only)
    axial_ax = next(ax for ax in fig.axes if ax.get_title().startswith("axial"))
    r_marker = next(t for t in axial_ax.texts if t.get_text() == "R")
    l_marker = next(t for t in axial_ax.texts if t.get_text() == "L")
    assert r_marker.get_position()[0] < 0.5 < l_marker.get_position()[0]

    png = mpimg.imread(render_preview(ct, liver_only, tmp_path / "p.png"))[..., :3]
    left, bottom, width, height = PANEL_RECTS["axial"]
    w_px, h_px = FIGURE_SIZE_PX
    x0, x1 = int(left * w_px), int((left + width) * w_px)
    y0, y1 = int((1 - bottom - height) * h_px), int((1 - bottom) * h_px)
    panel = png[y0:y1, x0:x1]
    coloured = (panel.max(axis=2) - panel.min(axis=2)) > 0.12  # the overlay; CT and text are grey/yellow
    coloured &= panel[..., 2] < panel[..., 0] - 0.1  # liver's rust hue, not the yellow letters
    assert coloured.sum() > 200
    liver_x = np.nonzero(coloured)[1].mean()
    assert liver_x < (x1 - x0) / 2, "the liver must be drawn on the image's left, next to the R marker"


def test_legend_lists_only_present_labels():
    ct, labels = coarse_phantom()
    only_two = labels.with_array(np.where(np.isin(labels.array, (1, 5)), labels.array, 0).astype(np.uint8))
    fig = build_figure(ct, only_two)
    texts = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert texts == ["1 liver", "5 aorta"]


def test_empty_mask_renders_at_the_volume_centre(tmp_path):
    ct, labels = coarse_phantom()
    empty = labels.with_array(np.zeros_like(labels.array))
    panels = oriented_panels(ct, empty)
    assert panels["axial"].index == ct.shape[2] // 2
    assert render_preview(ct, empty, tmp_path / "empty.png").exists()


def test_mismatched_grids_are_rejected(tmp_path):
    ct, labels = coarse_phantom()
    with pytest.raises(InvalidInputError):
        render_preview(ct, Volume(labels.array[:-1], labels.affine), tmp_path / "x.png")


def test_preview_cli_reads_files_and_writes_png(tmp_path, capsys):
    from service import preview_cli
    from service.io.writers import write_ct, write_mask

    ct, labels = coarse_phantom("LPS")
    write_ct(ct, tmp_path / "case_0000.nii.gz")
    write_mask(labels, tmp_path / "case.nii.gz")
    parser = argparse.ArgumentParser()
    preview_cli.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "case_0000.nii.gz"), str(tmp_path / "case.nii.gz"), str(tmp_path / "p.png")])
    assert preview_cli.run(args) == 0
    assert (tmp_path / "p.png").exists()
    assert "p.png" in capsys.readouterr().out
