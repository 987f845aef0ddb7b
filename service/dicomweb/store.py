"""STOW-RS of our outputs, all in one request, after every one of them was built.

The DICOM outputs are built in memory first (``pipeline``), so a failure while writing stores
nothing. The STOW-RS answer is checked: an HTTP error or a Failed SOP Sequence is a
``StowRefusedError`` naming the server's reason; instances the server reports as stored are
named in the message so nothing stored goes unreported.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from service.dicomweb.client import dicomweb_errors
from service.errors import DicomWebError, StowRefusedError

log = logging.getLogger(__name__)

# Failure Reason (0008,1197) codes of PS3.18 / PS3.4 that say why.
_REASONS = {0x0110: "processing failure", 0x0122: "SOP Class not supported", 0xA700: "out of resources",
            0xA900: "data set does not match SOP Class", 0xC000: "cannot understand", 0x0124: "not authorized",
            0x0111: "duplicate SOP Instance", 0xA770: "transfer syntax not supported"}


@dataclass(frozen=True)
class StoredObject:
    """One output as the destination stored it."""

    kind: str  # "rtstruct" | "seg"
    modality: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "modality": self.modality, "series_uid": self.series_uid,
                "sop_instance_uid": self.sop_instance_uid, "sop_class_uid": self.sop_class_uid}


def store_outputs(client, study_uid: str, built: dict[str, bytes]) -> list[StoredObject]:
    """STOW-RS ``built`` ({kind: Part 10 bytes}) into ``study_uid`` on ``client``'s server.

    Raises:
        StowRefusedError: HTTP error or failed instances in the answer.
        DicomWebUnavailableError: the server could not be reached.
    """
    import pydicom

    datasets = {kind: pydicom.dcmread(io.BytesIO(data)) for kind, data in built.items()}
    objects = [StoredObject(kind, str(ds.Modality), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                            str(ds.SOPClassUID)) for kind, ds in datasets.items()]
    url = client.base_url
    try:
        with dicomweb_errors("STOW-RS", url):
            answer = client.store_instances(list(datasets.values()), study_instance_uid=study_uid)
    except StowRefusedError:
        raise
    except DicomWebError as exc:
        if exc.code == "dicomweb_unavailable":
            raise
        raise StowRefusedError(f"{url} refused the STOW-RS of {_names(objects)}: {exc.message}") from None
    _check_answer(answer, objects, url)
    _confirm_stored(client, study_uid, objects)
    log.info("stored %s in study %s on %s", _names(objects), study_uid, url)
    return objects


def _confirm_stored(client, study_uid: str, objects: list[StoredObject]) -> None:
    """QIDO-RS for each object just stored. Why: a server may answer a STOW-RS with success for an
    instance its own filter then dropped (Orthanc's DICOMweb plugin 1.7 does so for a Lua
    ReceivedInstanceFilter's refusal), and "stored" must mean stored."""
    url = client.base_url
    missing = []
    for obj in objects:
        with dicomweb_errors("QIDO-RS check after STOW-RS", url):
            found = client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=obj.series_uid,
                                                search_filters={"SOPInstanceUID": obj.sop_instance_uid})
        if not found:
            missing.append(obj)
    if missing:
        raise StowRefusedError(
            f"{url} answered the STOW-RS with success but does not hold {_names(missing)} "
            "(dropped by an archive rule or filter on the server)"
        )


def _names(objects: list[StoredObject]) -> str:
    return ", ".join(f"{o.modality} {o.sop_instance_uid}" for o in objects)


def _check_answer(answer, objects: list[StoredObject], url: str) -> None:
    failed = list(getattr(answer, "FailedSOPSequence", []) or [])
    stored = {str(item.ReferencedSOPInstanceUID) for item in getattr(answer, "ReferencedSOPSequence", []) or []}
    if failed:
        reasons = "; ".join(
            f"{item.get('ReferencedSOPInstanceUID', '?')}: "
            f"{_REASONS.get(int(item.get('FailureReason', 0) or 0), 'failure reason ' + hex(int(item.get('FailureReason', 0) or 0)))}"
            for item in failed
        )
        kept = f"; stored anyway: {', '.join(sorted(stored))}" if stored else ""
        raise StowRefusedError(f"{url} refused {len(failed)} of {len(objects)} instances ({reasons}){kept}")
    unconfirmed = [o for o in objects if stored and o.sop_instance_uid not in stored]
    if unconfirmed:
        raise StowRefusedError(f"{url} did not confirm storing {_names(unconfirmed)}")
