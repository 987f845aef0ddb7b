"""One study from a PACS, segmented, its RTSTRUCT/SEG stored back: the steps in order.

QIDO-RS (choose the series) -> WADO-RS (stream it to a private temp folder) -> the DICOM series
reader and the input checks -> ``Segmenter`` -> every asked output built in memory -> one
STOW-RS. Any failure before the STOW-RS stores nothing; the temp folder is always removed.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.case_warnings import as_dicts, warnings_of
from service.dicomweb.client import Server, make_client, source_server, store_server
from service.dicomweb.retrieve import retrieve_series
from service.dicomweb.selection import SeriesInfo, choose_series, list_series
from service.dicomweb.store import StoredObject, store_outputs
from service.errors import InvalidInputError
from service.metrics_types import CaseMetrics
from service.outputs.selection import DICOM_OUTPUTS, parse_outputs
from service.settings import Settings
from service.workdir import ensure_base

log = logging.getLogger(__name__)


@dataclass
class DicomWebResult:
    """What a DICOMweb case did: the chosen series, the stored objects, the cost and the warnings."""

    study_uid: str
    series: SeriesInfo
    stored: list[StoredObject]
    source_url: str
    store_url: str
    metrics: CaseMetrics
    seconds: dict[str, float] = field(default_factory=dict)  # select, retrieve, read, segment, build, store
    warnings: list[dict[str, str]] = field(default_factory=list)
    passed_over: list[dict] = field(default_factory=list)  # the study's other series and why

    def to_dict(self) -> dict:
        return {"study_uid": self.study_uid, "chosen_series": self.series.to_dict(),
                "stored": [o.to_dict() for o in self.stored], "source_url": self.source_url,
                "store_url": self.store_url, "seconds": self.seconds, "warnings": self.warnings,
                "passed_over": self.passed_over, "metrics": self.metrics.to_dict()}


def dicom_outputs(value) -> tuple[str, ...]:
    """``parse_outputs`` limited to what can go to a PACS (rtstruct, seg); default rtstruct.

    Raises:
        InvalidInputError: an unknown kind, or nifti (a PACS stores DICOM only).
    """
    outputs = parse_outputs(value if value else "rtstruct")
    other = [kind for kind in outputs if kind not in DICOM_OUTPUTS]
    if other:
        raise InvalidInputError(f"output {', '.join(other)} cannot be stored over DICOMweb; "
                                f"choose from {', '.join(DICOM_OUTPUTS)}")
    return outputs


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._start, 4)
        self._start = now


class StudyCase:
    """One study's case in its steps, for callers that schedule them (the HTTP job holds the
    inference slot only around :meth:`read` and the segmentation):

    ``fetch(folder)`` (QIDO-RS choice + WADO-RS into ``folder``), ``read(folder)`` (the DICOM reader,
    input checks, output checks), ``store(built)`` (one STOW-RS, confirmed), ``result(...)``.
    Construction checks the outputs and the servers' URLs and makes the clients (no request yet).
    """

    def __init__(self, settings: Settings, *, study_uid: str, series_uid: str | None = None,
                 outputs=("rtstruct",), url: str | None = None) -> None:
        self.settings = settings
        self.study_uid, self.series_uid = study_uid, series_uid
        self.outputs = dicom_outputs(outputs)
        self.source = source_server(settings, url)
        self.destination = store_server(settings, self.source)
        self.client = make_client(self.source, settings)
        self.clock = _Clock()
        self.series_list: list[SeriesInfo] = []
        self.chosen: SeriesInfo | None = None

    def fetch(self, folder: Path) -> SeriesInfo:
        """Choose the series and stream it into ``folder``; returns the chosen series."""
        self.series_list = list_series(self.client, self.study_uid)
        self.chosen = choose_series(self.series_list, self.study_uid, self.series_uid)
        self.clock.lap("select")
        retrieve_series(self.client, self.study_uid, self.chosen, folder)
        self.clock.lap("retrieve")
        return self.chosen

    def read(self, folder: Path):
        """The fetched series as a Volume, with every reader and input check (and the outputs' own)."""
        from service.input_checks import add_input_warnings, enforce_refusals
        from service.io.dicom_series import read_dicom_folder
        from service.outputs.selection import check_outputs_possible

        name = f"series {self.chosen.uid if self.chosen else '?'}"
        volume = add_input_warnings(read_dicom_folder(folder, name, self.settings.max_input_voxels))
        enforce_refusals(volume, self.settings.refuse_warnings)
        check_outputs_possible(volume, self.outputs)
        self.clock.lap("read")
        return volume

    def store(self, built: dict[str, bytes]) -> list[StoredObject]:
        """STOW-RS every built output in one request to the destination (confirmed by QIDO-RS)."""
        same = self.destination is self.source
        target = self.client if same else make_client(self.destination, self.settings)
        stored = store_outputs(target, self.study_uid, built)
        self.clock.lap("store")
        return stored

    def result(self, stored: list[StoredObject], metrics: CaseMetrics, volume) -> DicomWebResult:
        return DicomWebResult(
            study_uid=self.study_uid, series=self.chosen, stored=stored, source_url=self.source.url,
            store_url=self.destination.url, metrics=metrics, seconds=self.clock.seconds,
            warnings=as_dicts(warnings_of(volume)),
            passed_over=[s.to_dict() for s in self.series_list if s is not self.chosen],
        )


def segment_study(
    settings: Settings, segmenter, *, study_uid: str, series_uid: str | None = None,
    outputs=("rtstruct",), url: str | None = None, should_stop: Callable[[], bool] | None = None,
) -> DicomWebResult:
    """Segment one study's chosen CT series and store the outputs in the same study.

    ``segmenter`` is a ``service.segmenter.Segmenter``; ``url`` overrides ``settings.dicomweb_url``.
    Every output is built in memory before the one STOW-RS, so a failure stores nothing.

    Raises:
        DicomWebUnavailableError, DicomWebNotFoundError, StowRefusedError, DicomWebError: the server.
        NoCtSeriesError: nothing to segment. DicomSeriesError: a partial or unreadable series.
        InvalidInputError / WarningRefusedError / InferenceError: as for any other case.
    """
    from service.outputs.dicom_common import model_info
    from service.outputs.selection import output_bytes

    case = StudyCase(settings, study_uid=study_uid, series_uid=series_uid, outputs=outputs, url=url)
    with tempfile.TemporaryDirectory(prefix="swinxseg-dicomweb-", dir=ensure_base(settings.work_dir)) as tmp:
        case.fetch(Path(tmp) / "series")
        volume = case.read(Path(tmp) / "series")
    result = segmenter.segment(volume, should_stop=should_stop)
    case.clock.lap("segment")
    labels, model = segmenter.manifest.labels, model_info(segmenter.manifest)
    built = {kind: output_bytes(kind, volume, result.mask, labels, model) for kind in case.outputs}
    case.clock.lap("build")
    return case.result(case.store(built), result.metrics, volume)


def describe(server: Server) -> str:
    """The server for logs and job status: URL and kind of credentials, never the secret."""
    return f"{server.url} (auth: {server.auth_kind()})"
