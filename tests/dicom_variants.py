"""Valid variants of the real DICOM series (fresh UIDs, pydicom), and an independent read-back.

The real fixture has blank UIDs and JPEG 2000 pixels; GDCM (SimpleITK) decodes its pixels here,
and each variant is written uncompressed with pydicom, cropped to keep the tests small, in a
chosen patient orientation. Nothing here uses the service's own DICOM code.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def zip_series(folder: Path) -> bytes:
    """The files of a series folder as the bytes of one zip (flat names), as an upload carries it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, path.name)
    return buffer.getvalue()


# (row cosine, column cosine, PatientPosition, reverse file names)
VARIANTS = {
    "head_first_supine": ((1, 0, 0), (0, 1, 0), "HFS", False),
    "feet_first_supine": ((-1, 0, 0), (0, 1, 0), "FFS", False),
    "prone": ((-1, 0, 0), (0, -1, 0), "HFP", False),
    "column_negated": ((1, 0, 0), (0, -1, 0), "HFS", False),
    "reverse_file_names": ((1, 0, 0), (0, 1, 0), "HFS", True),
}
CROP = (slice(176, 336), slice(176, 336))  # rows, columns: 160 x 160 of the abdomen
PATIENT_ID = "SWX-TEST-0001"


def fixture_slices(series_dir: Path) -> list[tuple[Dataset, np.ndarray]]:
    """(header, HU rows x columns) of each real slice, ordered by z."""
    slices = []
    for path in sorted(series_dir.iterdir()):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        hu = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0]
        slices.append((header, hu))
    slices.sort(key=lambda item: float(item[0].ImagePositionPatient[2]))
    return slices


def write_variant(
    folder: Path, slices: list[tuple[Dataset, np.ndarray]], variant: str, *,
    tilt_mm_per_slice: float = 0.0, oblique_deg: float = 0.0, blank_uids: bool = False, crop=CROP,
) -> Path:
    """Write the slices as one valid CT series in ``folder`` with the geometry of ``variant``."""
    row, col, patient_position, reverse = VARIANTS[variant]
    row, col = np.asarray(row, float), np.asarray(col, float)
    if oblique_deg:
        a = np.radians(oblique_deg)  # rotate both cosines about the column axis
        rotation = _rotation(col, a)
        row = rotation @ row
    normal = np.cross(row, col)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    base = np.array([-78.0, -65.0, -120.0])
    count = len(slices)
    for k, (header, hu) in enumerate(slices):
        pixels = np.ascontiguousarray(hu[crop]).astype(np.int16)
        position = base + k * 2.0 * normal + k * tilt_mm_per_slice * col
        ds = _slice_dataset(header, pixels, position, np.r_[row, col], k, patient_position,
                            (study, series, frame), blank_uids)
        name = f"IM{(count - 1 - k) if reverse else k:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return folder


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _slice_dataset(header, pixels, position, orientation, k, patient_position, uids, blank_uids) -> Dataset:
    study, series, frame = uids
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "" if blank_uids else generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID or generate_uid()
    ds.PatientName, ds.PatientID = "Test^Phantom", PATIENT_ID
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "ACC1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
    ds.Manufacturer = "test"
    ds.PatientPosition = patient_position
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.PixelSpacing = list(header.PixelSpacing)
    ds.SliceThickness = 2.0
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.PixelData = pixels.tobytes()
    return ds


@dataclass
class SliceGeometry:
    """One CT file's own geometry, from its header (LPS mm)."""

    uid: str
    position: np.ndarray
    row: np.ndarray
    col: np.ndarray
    spacing: tuple[float, float]  # row spacing, column spacing
    shape: tuple[int, int]  # rows, columns

    def world(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.position + np.outer(cols * self.spacing[1], self.row) + np.outer(rows * self.spacing[0], self.col)

    def pixel(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, distance from the plane) of LPS points."""
        d = points - self.position
        return d @ self.col / self.spacing[0], d @ self.row / self.spacing[1], d @ np.cross(self.row, self.col)


def series_geometry(folder: Path) -> dict[str, SliceGeometry]:
    geometry = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        geometry[str(ds.SOPInstanceUID)] = SliceGeometry(
            uid=str(ds.SOPInstanceUID), position=np.array([float(v) for v in ds.ImagePositionPatient]),
            row=iop[:3], col=iop[3:], spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
            shape=(int(ds.Rows), int(ds.Columns)),
        )
    return geometry


def nifti_on_slices(mask: np.ndarray, affine: np.ndarray, geometry: dict[str, SliceGeometry]) -> dict[str, np.ndarray]:
    """The NIfTI mask sampled at every pixel centre of every CT slice (world coordinates; the
    indices must land on voxel centres)."""
    inverse = np.linalg.inv(affine)
    sampled = {}
    for uid, g in geometry.items():
        rows, cols = np.meshgrid(np.arange(g.shape[0]), np.arange(g.shape[1]), indexing="ij")
        lps = g.world(rows.ravel().astype(float), cols.ravel().astype(float))
        ras = lps * [-1, -1, 1]
        index = ras @ inverse[:3, :3].T + inverse[:3, 3]
        rounded = np.rint(index)
        assert np.abs(index - rounded).max() < 1e-3, "CT pixel centres are not NIfTI voxel centres"
        i, j, k = rounded.astype(int).T
        sampled[uid] = mask[i, j, k].reshape(g.shape)
    return sampled


def organ_mask(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Organs defined in world mm around the volume's centre, so every orientation gets the same
    anatomy: an ellipsoid (1, liver), a sphere (2), a ring with a hole on every slice (3, spleen),
    a single-voxel speck (9, below the RTSTRUCT island size)."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(np.float64)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    centre = world.reshape(-1, 3).mean(axis=0)
    x, y, z = np.moveaxis(world - centre, -1, 0)
    mask = np.zeros(shape, np.uint8)
    mask[((x + 15) / 35) ** 2 + (y / 30) ** 2 + (z / 15) ** 2 <= 1] = 1
    mask[(x - 35) ** 2 + (y + 40) ** 2 + z**2 <= 12**2] = 2
    ring = np.hypot(x - 35, y - 30)
    mask[(ring >= 8) & (ring <= 20) & (np.abs(z) <= 12)] = 3
    far = tuple(int(n * 0.1) for n in shape)
    mask[far] = 9
    return mask
