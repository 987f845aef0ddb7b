"""One model contract: the preprocessing a run trains with is recorded in its checkpoint, export
writes it into the manifest, and the service preprocesses exactly so. A checkpoint without the
record (the authors' format) is exported with the paper's values, and the log says so."""

from __future__ import annotations

import logging

import pytest
import torch

from model_export.config import preset
from model_export.export import export_model
from model_export.network import SwinXSeg
from service.cli import main
from service.geometry import pipeline
from service.manifest import load_manifest
from service.preprocess_spec import PreprocessSpec
from service.segmenter import Segmenter
from service.settings import Settings
from training.data import PreprocessParams, prepare_case

COMMON = ["--patch-size", "32", "--batch-size", "2", "--warmup-steps", "1", "--log-interval", "1"]
TRAINED = PreprocessSpec(roi_size=(32, 32, 32), target_spacing_mm=(1.5, 1.5, 1.5), hu_window=(-160.0, 240.0))


@pytest.mark.slow
def test_two_steps_at_1_5_mm_and_window_minus_160_240_are_served_with_exactly_those(
    tmp_path, case_folders, make_ct, monkeypatch
):
    images, labels = case_folders
    run, model = tmp_path / "run", tmp_path / "model"
    assert main(["train", "--images", str(images), "--labels", str(labels), "--out", str(run), "--steps", "2",
                 "--spacing-mm", "1.5", "1.5", "1.5", "--hu-window", "-160", "240", *COMMON]) == 0
    assert PreprocessSpec.model_validate(torch.load(run / "last.pt", weights_only=True)["preprocess"]) == TRAINED
    assert main(["export", "--checkpoint", str(run / "last.pt"), "--preset", "tiny", "--format", "torchscript",
                 "--out", str(model)]) == 0
    manifest = load_manifest(model)
    assert manifest.preprocess == TRAINED
    assert (manifest.roi_size, manifest.target_spacing_mm, manifest.hu_window) == ([32] * 3, [1.5] * 3, [-160.0, 240.0])

    seen = []
    real = pipeline.preprocess

    def spy(volume, spec, **options):
        prepared = real(volume, spec, **options)
        seen.append((spec, options, prepared.image.clone()))
        return prepared

    monkeypatch.setattr("service.segmenter.preprocess", spy)
    segmenter = Segmenter(Settings(model_dir=model, device="cpu", backend="torchscript"))
    assert segmenter.roi == (32, 32, 32)
    ct, ct_labels = make_ct(axcodes="LPS", seed=5)
    segmenter.segment(ct)
    (spec, options, served_image), = seen
    assert spec == TRAINED and options["body_threshold_hu"] is None
    # The network sees in service exactly what training fed it for the same CT.
    trained_image = prepare_case("probe", ct, ct_labels, PreprocessParams(spec=TRAINED)).image
    torch.testing.assert_close(served_image, trained_image)


def test_a_checkpoint_without_the_record_gets_the_papers_values_and_says_so(tmp_path, caplog):
    checkpoint = tmp_path / "published.pt"
    torch.save({"state_dict": SwinXSeg(preset("tiny")).state_dict()}, checkpoint)
    caplog.set_level(logging.INFO)
    export_model(checkpoint=checkpoint, preset="tiny", formats=["torchscript"], out_dir=tmp_path / "model")
    manifest = load_manifest(tmp_path / "model")
    assert manifest.preprocess == PreprocessSpec()
    assert (manifest.roi_size, manifest.target_spacing_mm, manifest.hu_window) == ([96] * 3, [1.0] * 3, [-250.0, 250.0])
    assert ("published.pt has no preprocessing record (the authors' format): the manifest gets the paper's "
            "1x1x1 mm spacing, HU window [-250.0, 250.0] and ROI 96x96x96") in caplog.text
