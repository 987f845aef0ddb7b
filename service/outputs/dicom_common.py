"""What every DICOM output of ours shares: the CT's patient and study modules, our equipment
and series description, new UIDs, and an atomic file write."""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from service import __version__
from service.io.writers import OUTPUT_FILE_MODE

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

MANUFACTURER = "swinxseg"
# Patient and General Study module attributes copied from the CT, so the output joins its study.
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientWeight", "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription",
)


@dataclass(frozen=True)
class ModelInfo:
    """Who made the segmentation: the model's name, the service version, the manifest's sha256."""

    name: str
    version: str = __version__
    manifest_sha256: str = ""
    demo: bool = False

    @property
    def series_description(self) -> str:
        text = f"{self.name} auto-segmentation"
        return f"{text}, demo weights, not for clinical use" if self.demo else text


def model_info(manifest) -> ModelInfo:
    """``ModelInfo`` of a ``ModelManifest``: demo weights are named as such in every output."""
    import hashlib

    digest = hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()
    demo = "demo" in manifest.name.lower() or "demo" in manifest.preset.lower() or "demo" in manifest.notes.lower()
    return ModelInfo(name=manifest.name, manifest_sha256=digest, demo=demo)


def copy_patient_and_study(ct: Dataset, out: Dataset) -> None:
    """Patient and General Study modules from the CT (type 2 attributes present, empty if the CT lacks them)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in ct:
            setattr(out, keyword, ct.data_element(keyword).value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword not in out:
            setattr(out, keyword, "")
    if "SpecificCharacterSet" in ct:
        out.SpecificCharacterSet = ct.SpecificCharacterSet


def set_equipment_and_series(out: Dataset, model: ModelInfo, *, modality: str, series_number: int) -> None:
    """General Equipment, the series attributes, new Series and SOP Instance UIDs, creation time."""
    from pydicom.uid import generate_uid

    now = datetime.now()
    out.Modality = modality
    out.SeriesInstanceUID = generate_uid()
    out.SOPInstanceUID = generate_uid()
    out.SeriesNumber = series_number
    out.SeriesDescription = model.series_description[:64]
    out.SeriesDate = out.InstanceCreationDate = now.strftime("%Y%m%d")
    out.SeriesTime = out.InstanceCreationTime = now.strftime("%H%M%S")
    out.Manufacturer = MANUFACTURER
    out.ManufacturerModelName = model.name[:64]
    out.SoftwareVersions = model.version
    out.OperatorsName = ""


def dataset_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (preamble, file meta, explicit VR little endian)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_bytes_atomically(data: bytes, path: Path) -> Path:
    """Write ``data`` to ``path`` through a hidden temp file in the same folder and a rename, so
    ``path`` is either absent or complete; mode ``OUTPUT_FILE_MODE``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, OUTPUT_FILE_MODE)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
