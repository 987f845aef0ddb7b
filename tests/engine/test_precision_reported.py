"""The precision a case reports is the one the network ran in, resolved once by the predictor."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from service.segmenter import Segmenter
from service.settings import Settings
from service.volume import Volume


def _small_ct() -> Volume:
    hu = np.full((40, 40, 40), -1000, np.int16)
    hu[8:32, 8:32, 8:32] = 40
    return Volume(hu, np.eye(4))


def test_float16_asked_on_the_cpu_runs_and_is_reported_as_float32(caplog):
    caplog.set_level(logging.INFO)
    segmenter = Segmenter(Settings(device="cpu", backend="torchscript", inference_precision="float16"))
    assert segmenter.precision == "float32"
    assert segmenter.predictor.precision == "float32" and segmenter.backend == "torchscript-float32"
    metrics = segmenter.segment(_small_ct()).metrics
    assert (metrics.precision, metrics.backend, metrics.device) == ("float32", "torchscript-float32", "cpu")
    assert "float16 requested on cpu: running float32" in caplog.text
    assert "torchscript-float32 on cpu in float32 (asked for float16)" in caplog.text


@pytest.mark.parametrize(("asked", "runs"), [("float16", "float32"), ("bfloat16", "float32"), ("auto", "float32")])
def test_onnx_reports_the_precision_it_was_exported_in(asked, runs):
    segmenter = Segmenter(Settings(device="cpu", backend="onnx", inference_precision=asked))
    assert segmenter.precision == runs
    assert segmenter.segment(_small_ct()).metrics.precision == runs


def test_bfloat16_autocast_on_the_cpu_is_reported_as_bfloat16():
    segmenter = Segmenter(Settings(device="cpu", backend="torchscript", inference_precision="bfloat16"))
    assert segmenter.precision == "bfloat16" and segmenter.backend == "torchscript-bfloat16"
