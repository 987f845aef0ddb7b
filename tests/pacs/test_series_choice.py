"""The documented series choice (service/dicomweb/selection.py): against a real Orthanc holding a
localizer and two CT series of different slice thickness, and the rule's order on its own."""

from __future__ import annotations

import pytest
from pacs.orthanc_kit import PASSWORD, USER
from pacs.series_kit import ct_series, relabel
from pydantic import SecretStr
from pydicom.uid import generate_uid

from service.dicomweb.client import Server, make_client
from service.dicomweb.selection import SeriesInfo, choose_series, list_series
from service.errors import DicomWebNotFoundError, NoCtSeriesError
from service.settings import Settings

LOCALIZER = ("ORIGINAL", "PRIMARY", "LOCALIZER")


def _study(tmp_path, slices, orthanc) -> tuple[str, dict[str, str]]:
    """A localizer with the most slices, then 3 mm and 2 mm CT series of 16 slices each."""
    study = generate_uid()
    uids = {}
    for number, (name, part, kwargs) in enumerate([
        ("localizer", slices, {"image_type": LOCALIZER}),
        ("thick", slices[:16], {"thickness_mm": 3.0}),
        ("thin", slices[:16], {"thickness_mm": 2.0}),
    ], start=1):
        folder = ct_series(tmp_path / name, part)
        uids[name] = relabel(folder, study_uid=study, series_number=number, description=name, **kwargs)
        orthanc.send(folder)
    return study, uids


def _client(orthanc):
    return make_client(Server(orthanc.dicomweb_url, USER, SecretStr(PASSWORD)), Settings(dicomweb_retries=0))


def test_the_thinnest_of_the_ct_series_with_most_slices_is_chosen_not_the_localizer(orthanc, real_slices, tmp_path):
    study, uids = _study(tmp_path, real_slices, orthanc)
    client = _client(orthanc)

    series = list_series(client, study)
    chosen = choose_series(series, study)

    assert chosen.uid == uids["thin"]
    by_uid = {s.uid: s for s in series}
    assert len(by_uid[uids["localizer"]].instances) == len(real_slices) > len(chosen.instances) == 16
    assert "localizer" in by_uid[uids["localizer"]].rejected
    assert by_uid[uids["thick"]].thickness_mm == 3.0 and chosen.thickness_mm == 2.0
    # Asked for by UID, the thick series is used as asked.
    assert choose_series(series, study, uids["thick"]).uid == uids["thick"]
    with pytest.raises(DicomWebNotFoundError, match="not in study"):
        choose_series(series, study, generate_uid())


def test_a_study_with_only_a_localizer_has_no_ct_series(orthanc, real_slices, tmp_path):
    folder = ct_series(tmp_path / "loc", real_slices[:4])
    study = generate_uid()
    relabel(folder, study_uid=study, series_number=1, image_type=LOCALIZER)
    orthanc.send(folder)

    with pytest.raises(NoCtSeriesError, match=r"no axial CT series.*localizer"):
        choose_series(list_series(_client(orthanc), study), study)


def _info(uid, count, thickness, *, modality="CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"), normal=0.0, number=1):
    return SeriesInfo(uid=uid, modality=modality, number=number, instances=[f"{uid}.{i}" for i in range(count)],
                      image_type=image_type, thickness_mm=thickness, normal_deg=normal)


def test_the_rule_order_most_slices_then_thinnest_then_series_number():
    series = [
        _info("1.1", 300, 1.0, normal=90.0),  # coronal reformat: not axial
        _info("1.2", 500, 0.5, modality="SEG"),
        _info("1.3", 120, 1.0),
        _info("1.4", 200, 2.0),
        _info("1.5", 200, 1.25, number=7),
        _info("1.6", 200, 1.25, number=3),
        _info("1.7", 900, 0.6, image_type=("ORIGINAL", "PRIMARY", "SCOUT")),
    ]
    assert choose_series(series, "9").uid == "1.6"
    assert "not axial" in series[0].rejected and "not CT" in series[1].rejected and "scout" in series[6].rejected
    with pytest.raises(NoCtSeriesError, match="1.2 cannot be segmented: modality SEG"):
        choose_series(series, "9", "1.2")


def test_an_asked_series_must_pass_the_rule_too():
    series = [_info("1.3", 120, 1.0), _info("1.7", 3, 0.6, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))]
    with pytest.raises(NoCtSeriesError, match="1.7 cannot be segmented: a localizer"):
        choose_series(series, "9", "1.7")
