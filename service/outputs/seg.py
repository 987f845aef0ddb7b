"""DICOM Segmentation (SEG) of a mask, on the CT series it was segmented from, with highdicom.

One segment per label present, numbered 1..N in label order (SEG needs consecutive numbers; the
segment label and codes say which organ each is), BINARY frames. Each frame is derived from one
CT slice and carries that slice's position and SOP Instance UID (highdicom builds the Per-frame
Functional Groups from the source headers, in the volume's k order), so OHIF and Slicer place
frames by position, not by frame order. Empty frames are omitted (highdicom's default), which
the standard allows and which viewers handle because every frame says where it lies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from service.errors import InvalidInputError
from service.outputs.dicom_common import ModelInfo, dataset_bytes
from service.outputs.label_codes import LabelCoding, coding_for
from service.outputs.source_series import source_series
from service.preview import present_labels
from service.volume import Volume

if TYPE_CHECKING:
    import highdicom
    from pydicom.dataset import Dataset

SERIES_NUMBER = 9902
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def seg_bytes(ct: Volume, mask: Volume, labels: dict[int, str], model: ModelInfo) -> bytes:
    """The SEG file (bytes) for ``mask`` (same grid as ``ct``).

    Raises:
        InvalidInputError: ``ct`` was not read from a DICOM series.
        DicomSeriesError: blank or duplicate UIDs (see ``source_series``).
        InvalidInputError: (code ``empty_segmentation``) the mask holds no label of ``labels``
            (an empty SEG is not a valid object).
    """
    return dataset_bytes(build_seg(ct, mask, labels, model))


def build_seg(ct: Volume, mask: Volume, labels: dict[int, str], model: ModelInfo) -> highdicom.seg.Segmentation:
    import highdicom as hd

    series = source_series(ct, "SEG")
    found = set(present_labels(mask.array))  # one histogram pass, not one comparison per label
    present = [label for label in sorted(labels) if label > 0 and label in found]
    if not present:
        raise InvalidInputError("the mask holds no labelled voxel; a SEG needs at least one segment",
                                code="empty_segmentation")
    lookup = np.zeros(int(max(int(mask.array.max()), max(present))) + 1, dtype=np.uint8)
    for number, label in enumerate(present, start=1):
        lookup[label] = number
    # (slices, rows, columns), made contiguous: highdicom compares each plane with each segment
    # number, and on a transposed view every plane is a strided gather (6x slower in total).
    frames = np.ascontiguousarray(lookup[np.asarray(mask.array)].transpose(2, 1, 0))
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name, version=model.version, family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"),
        parameters={"manifest_sha256": model.manifest_sha256} if model.manifest_sha256 else None,
    )
    descriptions = [_segment(hd, number, coding_for(label, labels[label]), algorithm)
                    for number, label in enumerate(present, start=1)]
    return hd.seg.Segmentation(
        source_images=[_with_type2_attributes(series.headers[0]), *series.headers[1:]],
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="swinxseg",
        manufacturer_model_name=model.name[:64],
        software_versions=model.version,
        device_serial_number="0",
        series_description=model.series_description[:64],
    )


def _with_type2_attributes(first: Dataset) -> Dataset:
    """A copy of the first header with the patient/study type 2 attributes highdicom copies
    present (empty when the CT lacks them, as type 2 allows), instead of an AttributeError."""
    from pydicom.dataset import Dataset as PydicomDataset

    copy = PydicomDataset(first)
    for keyword in _TYPE2:
        if keyword not in copy:
            setattr(copy, keyword, "")
    return copy


def _segment(hd, number: int, coding: LabelCoding, algorithm) -> highdicom.seg.SegmentDescription:
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=coding.name[:64],
        segmented_property_category=hd.sr.CodedConcept(coding.category[0], "SCT", coding.category[1]),
        segmented_property_type=hd.sr.CodedConcept(coding.type[0], "SCT", coding.type[1]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*coding.colour),
    )
    if coding.modifier is not None:
        modifier = hd.sr.CodedConcept(coding.modifier[0], "SCT", coding.modifier[1])
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    return description
