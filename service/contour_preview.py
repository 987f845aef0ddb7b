"""PNG preview of an RT Structure Set: its contours drawn as lines over axial CT slices.

For a person to see at a glance that an RTSTRUCT's contours sit on the organs of its CT (ours or
any other writer's). The contours are read with pydicom and placed by their world coordinates
(Contour Data is DICOM patient LPS mm; our Volume affine maps voxels to RAS mm, so x and y are
negated), never by slice order, so a flipped, prone or feet-first series shows whether the
contours really follow it. Slices are drawn in radiological convention like ``service.preview``
(patient right on the image's left, anterior up).

Refused (:class:`~service.errors.InvalidInputError`): a file that is not an RTSTRUCT, one without
contours, and, for a DICOM CT, a structure set whose Frame of Reference UID is not the CT's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import InvalidInputError
from service.io.dicom_headers import headers_of
from service.preview import FIGURE_SIZE_PX, SOFT_TISSUE_WINDOW_HU, draw_orientation_markers, literal_title
from service.volume import Volume

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
_OFF_SLICE_VOXELS = 0.25  # a contour further than this from a slice centre plane is "between slices"
_DPI = 100


@dataclass(frozen=True)
class RoiContours:
    """One ROI of a structure set: number, name, display colour (RGB 0..1) and its contours, each
    an (N, 3) array of patient LPS mm (DICOM Contour Data)."""

    number: int
    name: str
    colour: tuple[float, float, float]
    contours: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class ContourPanel:
    """One axial slice as drawn: the CT (rows anterior->posterior, columns right->left), the pixel
    aspect (row/column spacing), the slice index and world z (mm), and per ROI number the contour
    lines in display pixel coordinates ((M, 2) arrays of column, row)."""

    ct: np.ndarray
    aspect: float
    index: int
    z_mm: float
    lines: dict[int, list[np.ndarray]]


def read_rtstruct(path: Path) -> tuple[frozenset[str], list[RoiContours]]:
    """The Frame of Reference UIDs the structure set names (its ROIs' and its Referenced Frame of
    Reference Sequence's) and its ROIs with contours.

    Raises:
        InvalidInputError: not a DICOM RTSTRUCT, or no ROI carries a contour.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise InvalidInputError(f"{Path(path).name} is not a readable DICOM file: {exc}") from None
    if ds.get("Modality") != "RTSTRUCT":
        raise InvalidInputError(f"{Path(path).name} is a {ds.get('Modality', 'DICOM')} object, not an RTSTRUCT")
    rois = {int(roi.ROINumber): roi for roi in ds.get("StructureSetROISequence", [])}
    found = []
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        contours = tuple(np.asarray(c.ContourData, dtype=np.float64).reshape(-1, 3)
                         for c in item.get("ContourSequence", []) if len(c.get("ContourData", [])) >= 9)
        if contours:
            colour = tuple(float(v) / 255.0 for v in item.get("ROIDisplayColor", [255, 255, 0]))
            name = str(rois[number].ROIName) if number in rois else f"ROI {number}"
            found.append(RoiContours(number, name, colour, contours))  # type: ignore[arg-type]
    if not found:
        raise InvalidInputError(f"{Path(path).name} holds no contour to draw")
    frames = {str(roi.get("ReferencedFrameOfReferenceUID", "")) for roi in rois.values()}
    frames |= {str(item.get("FrameOfReferenceUID", "")) for item in ds.get("ReferencedFrameOfReferenceSequence", [])}
    return frozenset(frames - {""}), found


def check_frame_of_reference(ct: Volume, frame_uids: frozenset[str], rtstruct_name: str) -> str | None:
    """Refuse a structure set of another Frame of Reference than the DICOM CT's; returns a note
    for the figure when the CT has none to compare (NIfTI etc.: placed by world mm only)."""
    headers = headers_of(ct)
    ct_frame = str(headers[0].get("FrameOfReferenceUID", "")) if headers else ""
    if not ct_frame:
        return "CT has no Frame of Reference UID: contours placed by world coordinates only"
    others = sorted(frame_uids - {ct_frame})
    if others:
        raise InvalidInputError(
            f"{rtstruct_name} refers to Frame of Reference {', '.join(others)}, not the CT's {ct_frame}: "
            "its contours belong to another scan position"
        )
    return None


def axial_contour_panels(ct: Volume, rois: list[RoiContours], *, count: int = 3) -> list[ContourPanel]:
    """Up to ``count`` axial slices (spread over the slices that carry contours), display-ready.

    Each contour point goes LPS -> RAS world -> voxel index of the RAS-reoriented CT; a contour
    lies on the slice whose centre plane it is within 0.25 voxel of (the others are logged).
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(ct.affine)
    ct_ras = nib.orientations.apply_orientation(np.asarray(ct.array), ornt)
    affine_ras = ct.affine @ nib.orientations.inv_ornt_aff(ornt, ct.shape)
    world_to_index = np.linalg.inv(affine_ras)
    nx, ny, nz = ct_ras.shape
    by_slice: dict[int, dict[int, list[np.ndarray]]] = {}
    off_slice = 0
    for roi in rois:
        for points in roi.contours:
            ras = points * _LPS_TO_RAS
            index = ras @ world_to_index[:3, :3].T + world_to_index[:3, 3]
            k = int(round(float(index[:, 2].mean())))
            if np.abs(index[:, 2] - k).max() > _OFF_SLICE_VOXELS or not 0 <= k < nz:
                off_slice += 1
                continue
            display = np.c_[nx - 1 - index[:, 0], ny - 1 - index[:, 1]]  # columns right->left, rows A->P
            by_slice.setdefault(k, {}).setdefault(roi.number, []).append(np.vstack([display, display[:1]]))
    if off_slice:
        logger.warning("%d contour(s) do not lie on a CT slice plane and are not drawn", off_slice)
    if not by_slice:
        raise InvalidInputError("no contour lies on a slice of this CT: is it the structure set's CT?")
    spacing = np.linalg.norm(affine_ras[:3, :3], axis=0)
    chosen = _spread(sorted(by_slice), count)
    return [ContourPanel(ct=ct_ras[::-1, ::-1, k].T, aspect=float(spacing[1] / spacing[0]), index=k,
                         z_mm=float((affine_ras @ [0.0, 0.0, k, 1.0])[2]), lines=by_slice[k]) for k in chosen]


def _spread(slices: list[int], count: int) -> list[int]:
    """``count`` slices at even quantiles of the contoured range (all of them when fewer)."""
    if len(slices) <= count:
        return slices
    picks = np.linspace(0, len(slices) - 1, count + 2)[1:-1]
    return sorted({slices[int(round(p))] for p in picks})


def render_contour_preview(ct: Volume, rtstruct: Path, out_png: Path, *, title: str | None = None) -> Path:
    """Write a PNG (``FIGURE_SIZE_PX``) of ``rtstruct``'s contours over axial slices of ``ct``.

    Raises:
        InvalidInputError: see the module docstring.
    """
    frame_uids, rois = read_rtstruct(rtstruct)
    note = check_frame_of_reference(ct, frame_uids, Path(rtstruct).name)
    panels = axial_contour_panels(ct, rois)
    fig = _figure(panels, rois, title=title, note=note)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=_DPI, facecolor=fig.get_facecolor())
    logger.info("wrote contour preview %s", out_png)
    return out_png


def _figure(panels: list[ContourPanel], rois: list[RoiContours], *, title: str | None, note: str | None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(FIGURE_SIZE_PX[0] / _DPI, FIGURE_SIZE_PX[1] / _DPI), dpi=_DPI, facecolor="black")
    FigureCanvasAgg(fig)
    width = 0.82 / max(len(panels), 1)
    colours = {roi.number: roi.colour for roi in rois}
    for n, panel in enumerate(panels):
        ax = fig.add_axes((0.005 + n * width, 0.02, width - 0.005, 0.86))
        lo, hi = SOFT_TISSUE_WINDOW_HU
        ax.imshow(panel.ct, cmap="gray", vmin=lo, vmax=hi, aspect=panel.aspect, interpolation="nearest")
        for number, lines in panel.lines.items():
            for line in lines:
                ax.plot(line[:, 0], line[:, 1], color=colours[number], linewidth=1.2)
        ax.set_xlim(-0.5, panel.ct.shape[1] - 0.5)
        ax.set_ylim(panel.ct.shape[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"axial slice {panel.index} (z {panel.z_mm:.1f} mm)", color="white", fontsize=11)
        draw_orientation_markers(ax, "axial")
    legend_ax = fig.add_axes((0.83, 0.02, 0.165, 0.86))
    legend_ax.axis("off")
    handles = [Line2D([], [], color=roi.colour, linewidth=2, label=roi.name) for roi in rois]
    legend = legend_ax.legend(handles=handles, loc="upper left", frameon=False, labelcolor="white", fontsize=10)
    for text in legend.get_texts():
        text.set_parse_math(False)
    heading = " - ".join(part for part in (title, note) if part)
    if heading:
        fig.suptitle(literal_title(heading), color="white", fontsize=13, parse_math=False)
    return fig
