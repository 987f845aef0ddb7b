"""RTSTRUCT round trip on valid variants of the real series: read back with pydicom, each ROI
filled by scikit-image on the CT's own slices, compared with the NIfTI mask we wrote."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_variants import PATIENT_ID, VARIANTS, nifti_on_slices, organ_mask, series_geometry, write_variant
from skimage.draw import polygon2mask

from service.io.readers import read_volume
from service.labels import FLARE23_LABELS
from service.outputs.dicom_common import ModelInfo
from service.outputs.selection import write_outputs

MODEL = ModelInfo(name="swinxseg-test", manifest_sha256="ab" * 32)
DICE_MIN = 0.97


def _segment_variant(tmp_path, real_slices, variant):
    folder = write_variant(tmp_path / variant, real_slices, variant)
    ct = read_volume(folder, max_voxels=10**8)
    mask = ct.with_array(organ_mask(ct.shape, ct.affine))
    paths = write_outputs(("nifti", "rtstruct"), ct, mask, FLARE23_LABELS, MODEL, stem=tmp_path / "out" / variant)
    return folder, paths


def _rasterise(rtstruct, geometry):
    """{roi name: {slice uid: boolean (rows, cols)}} by the even-odd rule (nested contours are holes),
    checking every contour's slice reference and plane on the way."""
    names = {roi.ROINumber: roi.ROIName for roi in rtstruct.StructureSetROISequence}
    filled = {}
    for roi in rtstruct.ROIContourSequence:
        per_slice = filled.setdefault(names[roi.ReferencedROINumber], {})
        for contour in roi.ContourSequence:
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            assert uid in geometry, f"contour references {uid}, not in the series"
            g = geometry[uid]
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints >= 3
            rows, cols, off_plane = g.pixel(points)
            assert np.abs(off_plane).max() <= 0.01, "contour not on its slice's plane"
            polygon = polygon2mask(g.shape, np.c_[rows, cols])
            per_slice[uid] = per_slice.get(uid, np.zeros(g.shape, bool)) ^ polygon
    return filled


def _centroid(per_slice, geometry):
    points = [geometry[uid].world(*np.nonzero(m)) for uid, m in per_slice.items() if m.any()]
    return np.concatenate(points).mean(axis=0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rtstruct_round_trip(tmp_path, real_slices, variant):
    folder, paths = _segment_variant(tmp_path, real_slices, variant)
    rtstruct = pydicom.dcmread(paths["rtstruct"])
    nifti = nib.load(paths["nifti"])
    geometry = series_geometry(folder)
    reference = nifti_on_slices(np.asarray(nifti.dataobj), nifti.affine, geometry)
    filled = _rasterise(rtstruct, geometry)
    assert set(filled) == {"liver", "right_kidney", "spleen"}  # the one-voxel speck (9) is not written
    worst = 1.0
    for label in (1, 2, 3):
        name = FLARE23_LABELS[label]
        ours = {uid: m == label for uid, m in reference.items()}
        assert sum(int(m.sum()) for m in ours.values()) >= 1000
        theirs = {uid: filled[name].get(uid, np.zeros(m.shape, bool)) for uid, m in ours.items()}
        overlap = sum(int((ours[u] & theirs[u]).sum()) for u in ours)
        dice = 2 * overlap / (sum(int(m.sum()) for m in ours.values()) + sum(int(m.sum()) for m in theirs.values()))
        worst = min(worst, dice)
        assert dice >= DICE_MIN, f"{variant} {name}: Dice {dice:.4f}"
        spacing = (*geometry[next(iter(geometry))].spacing, 2.0)
        assert np.all(np.abs(_centroid(ours, geometry) - _centroid(theirs, geometry)) <= max(spacing))
    print(f"{variant}: minimum Dice {worst:.4f}")
    _check_references(rtstruct, folder, geometry)


def _check_references(rtstruct, folder, geometry):
    ct = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert rtstruct.Modality == "RTSTRUCT"
    assert rtstruct.PatientID == ct.PatientID == PATIENT_ID
    assert rtstruct.StudyInstanceUID == ct.StudyInstanceUID
    assert rtstruct.SeriesInstanceUID != ct.SeriesInstanceUID
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == ct.StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence} == set(geometry)
    for roi in rtstruct.StructureSetROISequence:
        assert roi.ReferencedFrameOfReferenceUID == ct.FrameOfReferenceUID
    types = {o.RTROIInterpretedType for o in rtstruct.RTROIObservationsSequence}
    assert types == {"ORGAN"}
    assert rtstruct.Manufacturer == "swinxseg" and "swinxseg-test" in rtstruct.SeriesDescription
