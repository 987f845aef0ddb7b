"""PNG preview of a segmentation: axial, coronal and sagittal slices with the labels overlaid.

Slices are shown in radiological convention (the patient's RIGHT on the image's LEFT, anterior up in
the axial panel, superior up in the others) whatever the file's voxel order, because both volumes are
first permuted/flipped to the closest RAS axes (no interpolation). Drawing uses matplotlib's Agg
canvas directly, so no display and no global backend switch are needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import InvalidInputError
from service.labels import FLARE23_LABELS
from service.volume import Volume

logger = logging.getLogger(__name__)

# Fixed colours (RGB 0..1) per FLARE-23 label so the same organ looks the same in every preview.
LABEL_COLOURS: dict[int, tuple[float, float, float]] = {
    1: (0.86, 0.31, 0.16),  # liver: rust
    2: (1.00, 0.85, 0.00),  # right kidney: gold
    3: (0.58, 0.20, 0.80),  # spleen: purple
    4: (0.10, 0.80, 0.80),  # pancreas: cyan
    5: (0.95, 0.05, 0.05),  # aorta: red
    6: (0.15, 0.35, 0.95),  # IVC: blue
    7: (1.00, 0.55, 0.00),  # right adrenal: orange
    8: (1.00, 0.40, 0.70),  # left adrenal: pink
    9: (0.10, 0.60, 0.10),  # gallbladder: dark green
    10: (0.65, 0.55, 1.00),  # esophagus: lavender
    11: (0.60, 0.90, 0.30),  # stomach: lime
    12: (0.95, 0.70, 0.50),  # duodenum: peach
    13: (0.85, 0.65, 0.15),  # left kidney: dark gold
    14: (1.00, 1.00, 1.00),  # tumour: white
}
_FALLBACK_COLOUR = (0.6, 0.6, 0.6)  # labels outside the table (never for FLARE-23)
OVERLAY_ALPHA = 0.45
SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)

FIGURE_SIZE_PX = (1500, 560)  # width, height of the PNG
_DPI = 100
# Figure-fraction rectangles (left, bottom, width, height): three panels side by side, legend right.
PANEL_RECTS: dict[str, tuple[float, float, float, float]] = {
    "axial": (0.005, 0.02, 0.27, 0.86),
    "coronal": (0.28, 0.02, 0.27, 0.86),
    "sagittal": (0.555, 0.02, 0.27, 0.86),
}
_LEGEND_RECT = (0.83, 0.02, 0.165, 0.86)

# Orientation letters per panel: (left, right, top, bottom) of the displayed image.
_MARKERS: dict[str, tuple[str, str, str, str]] = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}


@dataclass(frozen=True)
class Panel:
    """One displayed slice: rows top->bottom, columns left->right as drawn.

    ``aspect`` is the height/width ratio of one pixel (row spacing / column spacing, mm), and
    ``index`` the slice position along the RAS axis the panel cuts.
    """

    ct: np.ndarray
    labels: np.ndarray
    aspect: float
    index: int


def to_ras(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The volume's array permuted/flipped to the closest RAS axes, and its spacing (mm) in that order."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(volume.affine)
    array = nib.orientations.apply_orientation(volume.array, ornt)
    spacing = [0.0, 0.0, 0.0]
    for voxel_axis, (ras_axis, _) in enumerate(ornt):
        spacing[int(ras_axis)] = volume.spacing[voxel_axis]
    return array, (spacing[0], spacing[1], spacing[2])


def oriented_panels(ct: Volume, mask: Volume) -> dict[str, Panel]:
    """Axial, coronal and sagittal slices through the labelled region's centroid, display-ready.

    Radiological convention: axial rows run anterior->posterior and columns patient right->left;
    coronal rows superior->inferior, columns right->left; sagittal rows superior->inferior,
    columns anterior->posterior. The volume centre is used when the mask is empty.
    """
    _check_same_grid(ct, mask)
    ct_ras, spacing = to_ras(ct)
    lab_ras, _ = to_ras(mask)
    cx, cy, cz = _centre_index(lab_ras)
    sx, sy, sz = spacing
    # RAS index i grows toward the patient's right and j toward anterior, so both are reversed to put
    # the right on the image's left and anterior (or superior, k reversed) at the top.
    views = {
        "axial": (lambda a: a[::-1, ::-1, cz].T, sy / sx, cz),
        "coronal": (lambda a: a[::-1, cy, ::-1].T, sz / sx, cy),
        "sagittal": (lambda a: a[cx, ::-1, ::-1].T, sz / sy, cx),
    }
    return {name: Panel(ct=cut(ct_ras), labels=cut(lab_ras), aspect=aspect, index=int(index))
            for name, (cut, aspect, index) in views.items()}


def _check_same_grid(ct: Volume, mask: Volume) -> None:
    if ct.shape != mask.shape or not np.allclose(ct.affine, mask.affine, atol=1e-3):
        raise InvalidInputError(
            f"CT and mask must share a grid: shapes {ct.shape} vs {mask.shape}, "
            f"affines equal={np.allclose(ct.affine, mask.affine, atol=1e-3)}"
        )


def _centre_index(labels: np.ndarray) -> tuple[int, int, int]:
    """Rounded centroid (voxel indices) of the labelled voxels, or the array centre if none.

    Computed from per-axis profiles so a 512^2 x 500 mask needs no index arrays.
    """
    labelled = labels != 0
    total = int(np.count_nonzero(labelled))
    if total == 0:
        return tuple(n // 2 for n in labels.shape)  # type: ignore[return-value]
    centre = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        profile = labelled.sum(axis=others, dtype=np.int64)
        centre.append(int(round(float(np.dot(profile, np.arange(labels.shape[axis])) / total))))
    return centre[0], centre[1], centre[2]


def present_labels(labels: np.ndarray) -> list[int]:
    """Sorted non-zero label values in ``labels`` (integer-valued), counted slab by slab to bound memory."""
    if labels.dtype.kind in "ui" and labels.size and 0 <= int(labels.min()) and int(labels.max()) < 65536:
        counts = np.zeros(int(labels.max()) + 1, dtype=np.int64)
        for k in range(0, labels.shape[-1], 16):
            counts += np.bincount(labels[..., k : k + 16].ravel(), minlength=counts.size)
        return [int(v) for v in np.nonzero(counts)[0] if v != 0]
    return [int(v) for v in np.unique(labels) if v != 0]


def _overlay_rgba(labels2d: np.ndarray) -> np.ndarray:
    """RGBA image (float, 0..1): each label's fixed colour at ``OVERLAY_ALPHA``, background clear."""
    rgba = np.zeros(labels2d.shape + (4,), dtype=np.float32)
    for value in np.unique(labels2d):
        if value == 0:
            continue
        rgba[labels2d == value] = (*LABEL_COLOURS.get(int(value), _FALLBACK_COLOUR), OVERLAY_ALPHA)
    return rgba


def build_figure(ct: Volume, mask: Volume, *, labels: dict[int, str] | None = None, title: str | None = None):
    """The preview as a matplotlib ``Figure`` on an Agg canvas (nothing touches pyplot's state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    names = FLARE23_LABELS if labels is None else labels
    panels = oriented_panels(ct, mask)
    fig = Figure(figsize=(FIGURE_SIZE_PX[0] / _DPI, FIGURE_SIZE_PX[1] / _DPI), dpi=_DPI, facecolor="black")
    FigureCanvasAgg(fig)
    for name, panel in panels.items():
        ax = fig.add_axes(PANEL_RECTS[name])
        _draw_panel(ax, name, panel)
    present = present_labels(mask.array)
    legend_ax = fig.add_axes(_LEGEND_RECT)
    legend_ax.axis("off")
    handles = [Patch(color=LABEL_COLOURS.get(v, _FALLBACK_COLOUR), label=f"{v} {names.get(v, 'label')}") for v in present]
    if handles:
        legend = legend_ax.legend(handles=handles, loc="upper left", frameon=False, labelcolor="white", fontsize=10)
        for text in legend.get_texts():
            text.set_parse_math(False)  # label names are drawn as written, never as mathtext
    else:
        legend_ax.text(0.0, 0.98, "no labels", color="white", va="top", transform=legend_ax.transAxes)
    if title:
        # The title is user text (an upload's file name): drawn literally. With mathtext on,
        # "a$\foo$" is a parse error (500) and "$\frac...$" a formula.
        fig.suptitle(literal_title(title), color="white", fontsize=13, parse_math=False)
    return fig


_TITLE_MAX_CHARS = 120


def literal_title(title: str) -> str:
    """``title`` on one line: control characters shown as escapes, at most 120 characters."""
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in title)
    return text if len(text) <= _TITLE_MAX_CHARS else text[: _TITLE_MAX_CHARS - 1] + "\u2026"


def _draw_panel(ax, name: str, panel: Panel) -> None:
    """CT in the soft-tissue window, the label overlay and the orientation letters."""
    lo, hi = SOFT_TISSUE_WINDOW_HU
    ax.imshow(panel.ct, cmap="gray", vmin=lo, vmax=hi, aspect=panel.aspect, interpolation="nearest")
    ax.imshow(_overlay_rgba(panel.labels), aspect=panel.aspect, interpolation="nearest")
    ax.set_facecolor("black")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{name} (slice {panel.index})", color="white", fontsize=11)
    draw_orientation_markers(ax, name)


def draw_orientation_markers(ax, view: str) -> None:
    """The patient-direction letters at the four edges of a ``view`` panel (``axial``, ``coronal``,
    ``sagittal``), as displayed by this module's convention."""
    left, right, top, bottom = _MARKERS[view]
    style = {"color": "yellow", "fontsize": 14, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def render_preview(
    ct: Volume,
    mask: Volume,
    out_png: Path,
    *,
    labels: dict[int, str] = FLARE23_LABELS,
    title: str | None = None,
) -> Path:
    """Write a PNG preview (``FIGURE_SIZE_PX`` pixels) of ``mask`` over ``ct``; returns its path.

    ``ct`` holds HU and ``mask`` integer labels on the same grid (any orientation, RAS+ affines).
    """
    out_png = Path(out_png)
    fig = build_figure(ct, mask, labels=labels, title=title)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=_DPI, facecolor=fig.get_facecolor())
    logger.info("wrote preview %s", out_png)
    return out_png
