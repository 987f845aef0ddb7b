"""DICOM SEG round trip: read back with highdicom by source SOP Instance UID, equal to the NIfTI
mask voxel for voxel on every slice (empty frames omitted by the writer, zeros on read)."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_variants import PATIENT_ID, nifti_on_slices, organ_mask, series_geometry, write_variant

from service.io.readers import read_volume
from service.labels import FLARE23_LABELS
from service.outputs.dicom_common import ModelInfo
from service.outputs.selection import write_outputs

MODEL = ModelInfo(name="swinxseg-test", manifest_sha256="cd" * 32)


@pytest.mark.parametrize("variant", ["feet_first_supine", "prone", "column_negated", "reverse_file_names"])
def test_seg_round_trip(tmp_path, real_slices, variant):
    folder = write_variant(tmp_path / variant, real_slices, variant)
    ct = read_volume(folder, max_voxels=10**8)
    mask = ct.with_array(organ_mask(ct.shape, ct.affine))
    paths = write_outputs(("nifti", "seg"), ct, mask, FLARE23_LABELS, MODEL, stem=tmp_path / "out" / variant)
    nifti = nib.load(paths["nifti"])
    geometry = series_geometry(folder)
    reference = nifti_on_slices(np.asarray(nifti.dataobj), nifti.affine, geometry)

    seg = hd.seg.segread(paths["seg"])
    by_number = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    names_to_label = {name: label for label, name in FLARE23_LABELS.items()}
    assert sorted(by_number.values()) == sorted(FLARE23_LABELS[k] for k in (1, 2, 3, 9))
    uids = sorted(geometry)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               skip_overlap_checks=True)
    lookup = np.zeros(max(by_number) + 1, np.uint8)
    for number, name in by_number.items():
        lookup[number] = names_to_label[name]
    for n, uid in enumerate(uids):
        assert np.array_equal(lookup[pixels[n]], reference[uid]), f"{variant}: slice {uid} differs"
    ct_header = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert seg.PatientID == PATIENT_ID and seg.StudyInstanceUID == ct_header.StudyInstanceUID
    assert seg.FrameOfReferenceUID == ct_header.FrameOfReferenceUID
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "swinxseg-test"
    kidney = next(d for d in seg.SegmentSequence if d.SegmentLabel == "right_kidney")
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "24028007"
