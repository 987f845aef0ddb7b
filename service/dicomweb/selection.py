"""Which series of a study to segment (QIDO-RS + one instance's WADO-RS metadata per CT series).

The rule (docs/PACS.md, "Which series is segmented"):

1. A series asked for by UID is used if it is in the study and passes the checks of point 2;
   otherwise the request fails (``DicomWebNotFoundError`` / ``NoCtSeriesError``): it is never
   swapped for another series.
2. Otherwise the candidates are the study's series with Modality CT whose Image Type (0008,0008)
   names neither LOCALIZER nor SCOUT and whose slices are axial (the slice normal from Image
   Orientation (Patient) within 30 degrees of the patient's feet-head axis).
3. Among them: most instances (slices) first, then the thinnest Slice Thickness (0018,0050), then
   the lowest Series Number, then the Series Instance UID (so the choice is always the same).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from service.dicomweb.client import dicomweb_errors
from service.errors import DicomWebNotFoundError, NoCtSeriesError

log = logging.getLogger(__name__)

# QIDO-RS attribute tags (DICOM JSON keys).
MODALITY, SERIES_UID, SERIES_NUMBER, SERIES_DESCRIPTION = "00080060", "0020000E", "00200011", "0008103E"
SOP_UID, IMAGE_TYPE, SLICE_THICKNESS, ORIENTATION = "00080018", "00080008", "00180050", "00200037"
_NOT_IMAGES = ("LOCALIZER", "SCOUT")
AXIAL_MAX_DEG = 30.0
_BACKSLASH = "\\"  # DICOM's multi-value separator


@dataclass
class SeriesInfo:
    """One series of the study as the selection rule sees it (thickness in mm)."""

    uid: str
    modality: str
    number: int | None = None
    description: str = ""
    instances: list[str] = field(default_factory=list)  # SOP Instance UIDs (QIDO-RS)
    image_type: tuple[str, ...] = ()
    thickness_mm: float | None = None
    normal_deg: float | None = None  # angle of the slice normal to the feet-head axis
    rejected: str = ""  # why the rule passed it over ("" = a candidate)

    def to_dict(self) -> dict:
        return {"series_uid": self.uid, "modality": self.modality, "series_number": self.number,
                "description": self.description, "instances": len(self.instances),
                "image_type": list(self.image_type), "slice_thickness_mm": self.thickness_mm,
                "rejected": self.rejected}


def _value(item: dict, tag: str, default=None):
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


def _values(item: dict, tag: str) -> list:
    return list((item.get(tag) or {}).get("Value") or [])


def list_series(client, study_uid: str) -> list[SeriesInfo]:
    """The study's series (QIDO-RS); CT series are completed with their instances and one instance's
    metadata. Raises DicomWebNotFoundError when the server has no such study."""
    url = client.base_url
    missing = f"study {study_uid} is not on the DICOMweb server {url}"
    with dicomweb_errors("QIDO-RS series search", url, not_found=missing):
        found = client.search_for_series(study_instance_uid=study_uid, get_remaining=True,
                                         fields=[MODALITY, SERIES_NUMBER, SERIES_DESCRIPTION])
    if not found:
        raise DicomWebNotFoundError(missing)
    series = []
    for item in found:
        number = _value(item, SERIES_NUMBER)
        info = SeriesInfo(uid=str(_value(item, SERIES_UID, "")), modality=str(_value(item, MODALITY, "")),
                          number=int(number) if number is not None else None,
                          description=str(_value(item, SERIES_DESCRIPTION, "")))
        if info.modality == "CT":
            _complete(client, study_uid, info)
        series.append(info)
    return series


def _complete(client, study_uid: str, info: SeriesInfo) -> None:
    """Instances (QIDO-RS) and Image Type / thickness / orientation of the middle one (WADO-RS metadata)."""
    url = client.base_url
    with dicomweb_errors(f"QIDO-RS instance search of series {info.uid}", url):
        instances = client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=info.uid,
                                                get_remaining=True, fields=[SOP_UID])
    info.instances = sorted(str(_value(item, SOP_UID, "")) for item in instances)
    if not info.instances:
        return
    middle = info.instances[len(info.instances) // 2]
    with dicomweb_errors(f"WADO-RS metadata of instance {middle}", url):
        meta = client.retrieve_instance_metadata(study_uid, info.uid, middle)
    info.image_type = tuple(str(v).upper() for v in _values(meta, IMAGE_TYPE))
    thickness = _value(meta, SLICE_THICKNESS)
    info.thickness_mm = float(thickness) if thickness not in (None, "") else None
    info.normal_deg = _normal_angle([float(v) for v in _values(meta, ORIENTATION)])


def _normal_angle(cosines: list[float]) -> float | None:
    if len(cosines) != 6:
        return None
    r, c = cosines[:3], cosines[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(v * v for v in n)) or 1.0
    return math.degrees(math.acos(min(1.0, abs(n[2]) / norm)))


def _rejection(info: SeriesInfo) -> str:
    if info.modality != "CT":
        return f"modality {info.modality or 'missing'}, not CT"
    if not info.instances:
        return "no instances"
    named = [kind for kind in _NOT_IMAGES if kind in info.image_type]
    if named:
        return f"a {named[0].lower()} (Image Type {_BACKSLASH.join(info.image_type)})"
    if info.normal_deg is None:
        return "no Image Orientation (Patient)"
    if info.normal_deg > AXIAL_MAX_DEG:
        return f"not axial (slice normal {info.normal_deg:.0f} degrees from the feet-head axis)"
    return ""


def _rank(info: SeriesInfo) -> tuple:
    thickness = info.thickness_mm if info.thickness_mm is not None else math.inf
    number = info.number if info.number is not None else 1 << 30
    return (-len(info.instances), thickness, number, info.uid)


def choose_series(series: list[SeriesInfo], study_uid: str, series_uid: str | None = None) -> SeriesInfo:
    """The series the rule picks (module docstring); sets ``rejected`` on the others.

    Raises:
        DicomWebNotFoundError: ``series_uid`` is not in the study.
        NoCtSeriesError: the asked series is not CT, or no series passes the rule (the message
            lists each series and why it was passed over).
    """
    for info in series:
        info.rejected = _rejection(info)
    if series_uid:
        asked = next((s for s in series if s.uid == series_uid), None)
        if asked is None:
            raise DicomWebNotFoundError(f"series {series_uid} is not in study {study_uid}")
        if asked.rejected:
            raise NoCtSeriesError(f"series {series_uid} cannot be segmented: {asked.rejected}")
        return asked
    candidates = sorted((s for s in series if not s.rejected), key=_rank)
    if not candidates:
        reasons = "; ".join(f"{s.uid} ({s.rejected})" for s in series)
        raise NoCtSeriesError(f"study {study_uid} has no axial CT series to segment: {reasons}")
    chosen = candidates[0]
    for other in candidates[1:]:
        other.rejected = "ranked lower (fewer slices or thicker)"
    log.info("study %s: chose series %s (%d slices, %s mm) of %d series", study_uid, chosen.uid,
             len(chosen.instances), chosen.thickness_mm, len(series))
    return chosen
