"""Time RTSTRUCT + SEG writing for a 512x512x300 series with 13 organs (issue 19's goal: <= 10 s
together on 2 cores). ``python -m bench.dicom_outputs [--slices 300]``.

The series is synthetic (header-only pydicom datasets, as the reader keeps them) and the organs
are 13 ellipsoids of abdominal size; only the writers are timed, not reading or inference.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from service.labels import FLARE23_LABELS
from service.outputs.dicom_common import ModelInfo
from service.outputs.rtstruct import rtstruct_bytes
from service.outputs.seg import seg_bytes
from service.volume import Volume

SPACING = (0.8, 0.8, 1.5)


def synthetic_series(size: int, slices: int) -> Volume:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    headers = []
    for k in range(slices):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.Modality = "BENCH", "Bench^Case", "CT"
        ds.ImagePositionPatient = [-204.0, -204.0, k * SPACING[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]
        ds.SliceThickness, ds.Rows, ds.Columns = SPACING[2], size, size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        headers.append(ds)
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = (204.0, 204.0, 0.0)
    volume = Volume(np.zeros((size, size, slices), np.int16), affine)
    volume.meta.update(source_format="dicom", file_name="bench", dicom_headers=tuple(headers))
    return volume


def organs(shape: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    i, j, k = np.ogrid[: shape[0], : shape[1], : shape[2]]
    rng = np.random.default_rng(0)
    for label in range(1, 14):
        centre = rng.uniform(0.25, 0.75, 3) * shape
        radii = rng.uniform(0.05, 0.15, 3) * shape
        inside = ((i - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 + ((k - centre[2]) / radii[2]) ** 2 <= 1
        mask[inside] = label
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    ct = synthetic_series(args.size, args.slices)
    mask = ct.with_array(organs(ct.shape))
    model = ModelInfo(name="bench")
    started = time.perf_counter()
    rt = rtstruct_bytes(ct, mask, FLARE23_LABELS, model)
    rt_s = time.perf_counter() - started
    started = time.perf_counter()
    seg = seg_bytes(ct, mask, FLARE23_LABELS, model)
    seg_s = time.perf_counter() - started
    print(f"{args.size}x{args.size}x{args.slices}, {len(np.unique(mask.array)) - 1} organs: RTSTRUCT {rt_s:.2f} s "
          f"({len(rt) / 1e6:.1f} MB), SEG {seg_s:.2f} s ({len(seg) / 1e6:.1f} MB), together {rt_s + seg_s:.2f} s")


if __name__ == "__main__":
    main()
