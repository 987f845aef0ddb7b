"""The OpenVINO backend against TorchScript on the tiny network (the demo weights), and its rules.

Tolerances (logits of one 96^3 window of the tiny network, compared with TorchScript float32):
- float32: max |diff| <= 1e-3 (measured 2.8e-5 on an AVX2 CPU) and the same argmax everywhere
  but near-ties (>= 99.99 % of voxels);
- bfloat16 (8-bit mantissa, ~3 significant digits): max |diff| <= 5 % of the logits' range and
  argmax agreement >= 99 %. Runs only on a CPU whose OpenVINO capabilities list BF16.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from service.errors import ModelArtifactError
from service.inference import predictors
from service.inference.openvino_backend import OpenVinoPredictor, resolve_openvino_precision
from service.inference.predictors import OnnxPredictor, TorchScriptPredictor, load_predictor
from service.manifest import load_manifest
from service.settings import DEFAULT_MODEL_DIR

ov = pytest.importorskip("openvino", reason="openvino is in requirements.lock; this environment lacks it")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def demo():
    if not (DEFAULT_MODEL_DIR / "manifest.json").is_file():
        pytest.skip(f"demo weights not found at {DEFAULT_MODEL_DIR}")
    return DEFAULT_MODEL_DIR, load_manifest(DEFAULT_MODEL_DIR, verify_checksums=False)


@pytest.fixture(scope="module")
def window_and_reference(demo) -> tuple[torch.Tensor, torch.Tensor]:
    """One 96^3 window (a smooth random field, like clipped CT) and TorchScript float32's logits."""
    folder, manifest = demo
    generator = torch.Generator().manual_seed(3)
    coarse = torch.rand((1, 1, 12, 12, 12), generator=generator)
    window = torch.nn.functional.interpolate(coarse, size=tuple(manifest.roi_size), mode="trilinear")
    reference = load_predictor(folder, manifest, backend="torchscript", device=CPU, precision="float32")
    return window, reference(window)


def _cpu_capabilities() -> list[str]:
    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def test_openvino_float32_matches_torchscript(demo, window_and_reference) -> None:
    folder, manifest = demo
    window, reference = window_and_reference
    predictor = load_predictor(folder, manifest, backend="openvino", device=CPU, precision="float32")
    assert isinstance(predictor, OpenVinoPredictor)
    assert (predictor.name, predictor.precision) == ("openvino-cpu", "float32")
    out = predictor(window)
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert (out - reference).abs().max().item() <= 1e-3
    agreement = (out.argmax(1) == reference.argmax(1)).float().mean().item()
    assert agreement >= 0.9999


def test_openvino_bfloat16_matches_torchscript(demo, window_and_reference) -> None:
    capabilities = _cpu_capabilities()
    if "BF16" not in capabilities:
        pytest.skip(f"this CPU has no bfloat16 (OpenVINO capabilities: {', '.join(capabilities)})")
    folder, manifest = demo
    window, reference = window_and_reference
    predictor = load_predictor(folder, manifest, backend="openvino", device=CPU, precision="bfloat16")
    assert predictor.precision == "bfloat16"
    out = predictor(window)
    spread = (reference.max() - reference.min()).item()
    assert (out - reference).abs().max().item() <= 0.05 * spread
    assert (out.argmax(1) == reference.argmax(1)).float().mean().item() >= 0.99


def test_bfloat16_runs_only_where_the_cpu_has_it(demo, caplog: pytest.LogCaptureFixture) -> None:
    """The precision reported is what OpenVINO compiled, and the log says when bfloat16 was refused."""
    folder, manifest = demo
    has_bf16 = "BF16" in _cpu_capabilities()
    with caplog.at_level(logging.WARNING, logger="service.inference.openvino_backend"):
        predictor = load_predictor(folder, manifest, backend="openvino", device=CPU, precision="bfloat16")
    assert predictor.precision == ("bfloat16" if has_bf16 else "float32")
    assert ("no bfloat16 support" in caplog.text) is not has_bf16


def test_resolve_openvino_precision(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_openvino_precision("bfloat16", ["FP32", "BF16", "INT8"]) == "bfloat16"
    assert resolve_openvino_precision("float32", ["FP32", "BF16"]) == "float32"
    with caplog.at_level(logging.WARNING):
        assert resolve_openvino_precision("bfloat16", ["FP32", "INT8"]) == "float32"
    assert "FP32, INT8" in caplog.text
    with pytest.raises(ValueError, match="float16"):
        resolve_openvino_precision("float16", ["FP32", "FP16"])


def test_auto_on_cpu_prefers_openvino_then_onnx_then_torchscript(demo, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, manifest = demo
    assert isinstance(load_predictor(folder, manifest, device=CPU), OpenVinoPredictor)
    monkeypatch.setattr(predictors, "openvino_installed", lambda: False)
    assert isinstance(load_predictor(folder, manifest, device=CPU), OnnxPredictor)
    monkeypatch.setattr(predictors, "_onnxruntime_installed", lambda: False)
    assert isinstance(load_predictor(folder, manifest, device=CPU), TorchScriptPredictor)


def test_auto_on_cuda_never_picks_openvino(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    assert predictors.choose_backend("auto", torch.device("cuda"), tmp_path / "model.ts", tmp_path / "model.onnx") == "onnx"


def test_openvino_refuses_cuda_bad_files_and_wrong_windows(demo, tmp_path: Path) -> None:
    folder, manifest = demo
    with pytest.raises(ModelArtifactError, match="CPU only"):
        OpenVinoPredictor(folder / "model.onnx", device="cuda", out_channels=15, roi=(96, 96, 96))
    with pytest.raises(ModelArtifactError, match="model.onnx"):
        load_predictor(tmp_path, manifest, backend="openvino", device=CPU)
    (tmp_path / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelArtifactError, match="cannot load ONNX model"):
        load_predictor(tmp_path, manifest, backend="openvino", device=CPU)
    with pytest.raises(ModelArtifactError, match="channels"):
        OpenVinoPredictor(folder / "model.onnx", device=CPU, out_channels=14, roi=(96, 96, 96))
    predictor = OpenVinoPredictor(folder / "model.onnx", device=CPU, out_channels=15, roi=(96, 96, 96))
    with pytest.raises(ValueError, match="compiled for"):
        predictor(torch.zeros((1, 1, 64, 64, 64)))
    with pytest.raises(ValueError, match="B, 1, X, Y, Z"):
        predictor(torch.zeros((1, 2, 96, 96, 96)))


def test_a_batch_runs_window_by_window(demo, window_and_reference) -> None:
    """Two windows in one call give each window's own logits (the output buffer is not shared)."""
    folder, manifest = demo
    window, reference = window_and_reference
    predictor = load_predictor(folder, manifest, backend="openvino", device=CPU, precision="float32")
    out = predictor(torch.cat([window, torch.flip(window, dims=(2,))]))
    np.testing.assert_allclose(out[0].numpy(), reference[0].numpy(), atol=1e-3)
    assert (out[1] - out[0]).abs().max().item() > 0.1
