"""WADO-RS retrieval of one series into a folder, one instance at a time.

``DICOMwebClient.iter_series`` decodes the multipart answer as it streams in, so at most one
instance (plus one transfer chunk) is in memory; each is written to ``folder`` before the next is
read. The folder is then read by the ordinary DICOM series reader, with all its checks.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.dicomweb.client import dicomweb_errors
from service.dicomweb.selection import SeriesInfo
from service.errors import DicomSeriesError

log = logging.getLogger(__name__)


def retrieve_series(client, study_uid: str, series: SeriesInfo, folder: Path) -> int:
    """Write every instance of ``series`` to ``folder`` as ``NNNNN.dcm``; returns the count.

    Raises:
        DicomWebUnavailableError / DicomWebNotFoundError / DicomWebError: the transfer failed.
        DicomSeriesError: fewer or other instances arrived than QIDO-RS listed (a partial transfer).
    """
    folder.mkdir(parents=True, exist_ok=True)
    received: set[str] = set()
    missing = f"series {series.uid} of study {study_uid} is no longer on {client.base_url}"
    with dicomweb_errors(f"WADO-RS retrieval of series {series.uid}", client.base_url, not_found=missing):
        for index, dataset in enumerate(client.iter_series(study_uid, series.uid)):
            dataset.save_as(folder / f"{index:05d}.dcm", enforce_file_format=True)
            received.add(str(dataset.SOPInstanceUID))
    listed = set(series.instances)
    if received != listed:
        lost, extra = len(listed - received), len(received - listed)
        raise DicomSeriesError(
            f"series {series.uid}: partial transfer: QIDO-RS listed {len(listed)} instances, WADO-RS "
            f"delivered {len(received)} ({lost} missing, {extra} not listed); send the series again"
        )
    log.info("series %s: %d instances retrieved into %s", series.uid, len(received), folder)
    return len(received)
