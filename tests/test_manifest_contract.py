"""The manifest's one preprocessing record and one class count, and manifests written before them."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from service.manifest import ArchitectureConfig, ModelManifest, load_manifest
from service.preprocess_spec import PreprocessSpec


def test_flat_keys_of_older_manifests_become_the_record(tmp_path):
    legacy = {"name": "old", "architecture": {"out_channels": 4}, "labels": {}, "roi_size": [64, 64, 64],
              "target_spacing_mm": [1.5, 1.5, 2.0], "hu_window": [-160, 240], "in_channels": 1, "out_channels": 4}
    (tmp_path / "manifest.json").write_text(json.dumps(legacy))
    manifest = load_manifest(tmp_path, verify_checksums=False)
    assert manifest.preprocess == PreprocessSpec(roi_size=(64, 64, 64), target_spacing_mm=(1.5, 1.5, 2.0),
                                                 hu_window=(-160.0, 240.0))
    assert (manifest.out_channels, manifest.architecture.out_channels) == (4, 4)
    written = json.loads(manifest.model_dump_json())
    assert "hu_window" not in written and written["preprocess"]["hu_window"] == [-160.0, 240.0]
    assert "out_channels" not in written and written["architecture"]["out_channels"] == 4


def test_a_class_count_that_disagrees_with_the_architecture_is_refused():
    with pytest.raises(ValidationError, match="out_channels 3 disagrees with the architecture's 15"):
        ModelManifest(name="x", architecture=ArchitectureConfig(out_channels=15), labels={}, out_channels=3)
    assert ModelManifest(name="x", architecture=ArchitectureConfig(), labels={}, out_channels=3).out_channels == 3


def test_the_record_and_the_flat_keys_together_are_refused():
    with pytest.raises(ValidationError, match="not both"):
        ModelManifest(name="x", architecture=ArchitectureConfig(), labels={}, preprocess=PreprocessSpec(),
                      hu_window=[-100, 100])


def test_the_body_threshold_defaults_to_the_window_low_end_and_a_setting_overrides_it():
    spec = PreprocessSpec(hu_window=(-160.0, 240.0))
    assert spec.crop_threshold_hu() == -160.0
    assert spec.replace(body_threshold_hu=-500.0).crop_threshold_hu() == -500.0
    assert spec.crop_threshold_hu(override=-300.0) == -300.0
    with pytest.raises(ValidationError):
        spec.replace(hu_window=(240.0, -160.0))
