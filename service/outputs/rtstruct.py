"""RT Structure Set (RTSTRUCT) of a mask, on the CT series it was segmented from.

Written with pydicom directly rather than rt-utils: rt-utils re-reads the series from a folder
(a zip's files are gone by then, and the folder could have changed), orders slices its own way,
needs the GUI build of OpenCV (``opencv-python`` with libGL, heavy for a server image), and
writes holes only as a pin-hole cut or as loose contours. Here the slices are the ones the
volume was read from, in the same k order (:mod:`service.outputs.source_series`).

Geometry: contour points are placed with each slice's own ImagePositionPatient, the series'
ImageOrientationPatient and PixelSpacing, so every point of a contour lies exactly in its
slice's plane (same z as the slice for an axial series). Holes are written as **nested
contours** (an inner CLOSED_PLANAR contour inside the outer one on the same slice), which
Eclipse, RayStation, Monaco, Slicer and OHIF fill by the even-odd rule; islands smaller than
``contours.MIN_ISLAND_MM2`` and polygons under 3 points are not written. Oblique series are
refused (``source_series(..., axial_only=True)``); tilted ones are refused by the reader.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from service.errors import InvalidInputError
from service.outputs.contours import slice_polygons
from service.outputs.dicom_common import (
    ModelInfo,
    copy_patient_and_study,
    dataset_bytes,
    set_equipment_and_series,
)
from service.outputs.label_codes import coding_for
from service.outputs.source_series import SourceSeries, source_series
from service.volume import Volume

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# RT Referenced Study Sequence names the study by this (retired) Detached Study Management class.
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
CONTOUR_DATA = 0x30060050  # (3006,0050) Contour Data
SERIES_NUMBER = 9901  # ours, distinct from the scanner's usual 1-999


def rtstruct_bytes(ct: Volume, mask: Volume, labels: dict[int, str], model: ModelInfo) -> bytes:
    """The RTSTRUCT file (bytes) for ``mask`` (same grid as ``ct``, integer labels).

    One ROI per label present in ``labels``' keys (names from ``labels``: the manifest's table).

    Raises:
        InvalidInputError: ``ct`` was not read from a DICOM series.
        DicomSeriesError: blank/duplicate UIDs, or an oblique series (see ``source_series``).
        InvalidInputError: (code ``empty_segmentation``) no label to contour.
    """
    return dataset_bytes(build_rtstruct(ct, mask, labels, model))


def build_rtstruct(ct: Volume, mask: Volume, labels: dict[int, str], model: ModelInfo) -> Dataset:
    """The RTSTRUCT dataset (see :func:`rtstruct_bytes`)."""
    from pydicom.dataset import Dataset

    series = source_series(ct, "RTSTRUCT", axial_only=True)
    if mask.shape != ct.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the CT's {ct.shape}")
    ds = Dataset()
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    copy_patient_and_study(series.first, ds)
    set_equipment_and_series(ds, model, modality="RTSTRUCT", series_number=SERIES_NUMBER)
    ds.StructureSetLabel = "AutoSeg"
    ds.StructureSetName = model.name[:16]
    ds.StructureSetDescription = model.series_description[:1024]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"  # automatic contours: a clinician approves them
    # Frame of Reference module (the CT's), which the current RT Structure Set IOD includes.
    ds.FrameOfReferenceUID = series.first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = series.first.get("PositionReferenceIndicator", "")
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame(series)]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    frame_uid = str(series.first.FrameOfReferenceUID)
    boxes = ndimage.find_objects(np.asarray(mask.array))
    for label, name in sorted(labels.items()):
        if label <= 0 or label > len(boxes) or boxes[label - 1] is None:
            continue
        contours = _label_contours(mask.array, label, boxes[label - 1], series)
        if not contours:
            log.info("RTSTRUCT: label %d (%s) has only islands below the size limit; no ROI", label, name)
            continue
        number = len(ds.StructureSetROISequence) + 1
        _add_roi(ds, number, coding_for(label, name), contours, frame_uid, model)
    if not ds.StructureSetROISequence:
        raise InvalidInputError("the mask holds no contourable organ; an RTSTRUCT needs at least one ROI",
                                code="empty_segmentation")
    return ds


def _referenced_frame(series: SourceSeries) -> Dataset:
    from pydicom.dataset import Dataset

    images = [_image_ref(series, k) for k in range(len(series.headers))]
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series.first.SeriesInstanceUID
    referenced_series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study.ReferencedSOPInstanceUID = series.first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [referenced_series]
    frame = Dataset()
    frame.FrameOfReferenceUID = series.first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def _image_ref(series: SourceSeries, k: int) -> Dataset:
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = series.sop_class_uid
    ref.ReferencedSOPInstanceUID = series.sop_instance_uids[k]
    return ref


def _label_contours(array: np.ndarray, label: int, box: tuple[slice, ...], series: SourceSeries) -> list[Dataset]:
    """The Contour Sequence items of one label: per slice, each outer boundary and hole."""
    from pydicom.dataset import Dataset

    row_spacing, col_spacing = series.pixel_spacing
    step_i = col_spacing * series.row_cosine  # LPS mm per column (index i)
    step_j = row_spacing * series.col_cosine  # LPS mm per row (index j)
    sub = array[box] == label
    items = []
    for dk in range(sub.shape[2]):
        k = box[2].start + dk
        section = sub[:, :, dk].T  # (rows, columns)
        for polygon in slice_polygons(section, row_spacing * col_spacing):
            cols = polygon.points[:, 0] + box[0].start
            rows = polygon.points[:, 1] + box[1].start
            world = series.positions[k] + np.outer(cols, step_i) + np.outer(rows, step_j)
            item = Dataset()
            item.ContourImageSequence = [_image_ref(series, k)]
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(world)
            item[CONTOUR_DATA] = _contour_data(world)
            items.append(item)
    return items


def _contour_data(world: np.ndarray):
    """Contour Data (3006,0050): x\\y\\z... in mm with 4 decimals, as one DS element.

    Why the element holds the joined text rather than a list of numbers: pydicom turns each
    value of a list into a validated DS object (a regular expression each), which for a
    512x512x300 structure set (~270,000 values) was most of the RTSTRUCT writing time; its writer
    writes a text value as it is. The text is ours (``%.4f``: at most 16 characters below 1e10 mm,
    as DS allows; 0.0001 mm is far below any planning system's resolution), so the check cannot
    fail; larger coordinates take pydicom's validated path. Nothing reads the value back before
    the file is written.
    """
    from pydicom.dataelem import DataElement

    rounded = np.round(world.ravel(), 4)
    values = rounded.tolist()
    if not np.all(np.abs(rounded) < 1e10):  # one vectorised check, not a Python loop per value
        return DataElement(CONTOUR_DATA, "DS", [f"{v:.4f}" for v in values])
    return DataElement(CONTOUR_DATA, "DS", "\\".join(f"{v:.4f}" for v in values), already_converted=True)


def _add_roi(ds: Dataset, number: int, coding, contours: list[Dataset], frame_uid: str, model: ModelInfo) -> None:
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_uid
    roi.ROIName = coding.name
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"{model.name} {model.version}"[:64]
    ds.StructureSetROISequence.append(roi)
    contour = Dataset()
    contour.ReferencedROINumber = number
    contour.ROIDisplayColor = list(coding.colour)
    contour.ContourSequence = contours
    for n, item in enumerate(contours, start=1):
        item.ContourNumber = n
    ds.ROIContourSequence.append(contour)
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.ROIObservationLabel = coding.name[:16]
    observation.RTROIInterpretedType = coding.rt_interpreted_type
    observation.ROIInterpreter = ""
    ds.RTROIObservationsSequence.append(observation)
