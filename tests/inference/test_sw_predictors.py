"""Backends on a tiny network: TorchScript and ONNX Runtime agree with eager torch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from service.errors import ModelArtifactError
from service.inference.predictors import (
    FormulaPredictor,
    OnnxPredictor,
    Predictor,
    TorchScriptPredictor,
    load_predictor,
    resolve_device,
    resolve_precision,
)
from service.inference.stitcher import sliding_window_labels
from service.manifest import ArchitectureConfig, ModelManifest

ROI = (16, 16, 16)
CHANNELS = 3
CPU = torch.device("cpu")


def toy_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, CHANNELS, 1), torch.nn.Tanh(), torch.nn.Conv3d(CHANNELS, CHANNELS, 3, padding=1)
    ).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with model.ts and model.onnx of the same toy network."""
    folder = tmp_path_factory.mktemp("toy_model")
    net = toy_network()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit and the legacy ONNX exporter
        torch.jit.script(net).save(str(folder / "model.ts"))
        torch.onnx.export(
            net, (torch.zeros((1, 1, *ROI)),), str(folder / "model.onnx"),
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
    return folder


def manifest(channels: int = CHANNELS) -> ModelManifest:
    return ModelManifest(
        name="toy",
        architecture=ArchitectureConfig(out_channels=channels),
        labels={i: f"label{i}" for i in range(channels)},
        roi_size=list(ROI),
        out_channels=channels,
    )


@pytest.mark.parametrize("batch_size", [1, 2])
def test_torchscript_and_onnx_match_eager(model_dir: Path, batch_size: int) -> None:
    batch = torch.rand((batch_size, 1, *ROI))
    with torch.inference_mode():
        expected = toy_network()(batch)
    ts = TorchScriptPredictor(model_dir / "model.ts", device=CPU, out_channels=CHANNELS)
    ort = OnnxPredictor(model_dir / "model.onnx", device=CPU, threads=1)
    for predictor in (ts, ort):
        assert isinstance(predictor, Predictor)
        out = predictor(batch)
        assert out.shape == (batch_size, CHANNELS, *ROI) and out.device == CPU
        torch.testing.assert_close(out.float(), expected, atol=1e-5, rtol=1e-5)
    assert ort.out_channels == CHANNELS  # read from the graph's static channel axis


def test_torchscript_bfloat16_autocast_on_cpu(model_dir: Path) -> None:
    batch = torch.rand((1, 1, *ROI))
    ts = TorchScriptPredictor(model_dir / "model.ts", device=CPU, out_channels=CHANNELS, precision="bfloat16")
    reference = TorchScriptPredictor(model_dir / "model.ts", device=CPU, out_channels=CHANNELS)
    torch.testing.assert_close(ts(batch).float(), reference(batch), atol=5e-2, rtol=5e-2)


def test_backends_give_the_same_stitched_labels(model_dir: Path) -> None:
    image = torch.rand((20, 18, 30))
    labels = [
        sliding_window_labels(image, load_predictor(model_dir, manifest(), backend=b, device=CPU), roi=ROI, sw_batch_size=2).labels
        for b in ("torchscript", "onnx", "openvino")
    ]  # fmt: skip
    np.testing.assert_array_equal(labels[0], labels[1])
    np.testing.assert_array_equal(labels[0], labels[2])


def test_auto_on_cpu_reads_the_onnx_export_and_falls_back(model_dir: Path, tmp_path: Path) -> None:
    # OpenVINO or ONNX Runtime (tests/inference/test_openvino_backend.py checks which): both read model.onnx.
    assert load_predictor(model_dir, manifest(), device=CPU).name in ("openvino-cpu", "onnx-cpu")
    only_ts = tmp_path / "only_ts"
    only_ts.mkdir()
    (only_ts / "model.ts").write_bytes((model_dir / "model.ts").read_bytes())
    assert isinstance(load_predictor(only_ts, manifest(), device=CPU), TorchScriptPredictor)


def test_missing_artifacts_raise_model_artifact_error(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match="neither"):
        load_predictor(tmp_path, manifest(), device=CPU)
    with pytest.raises(ModelArtifactError, match="model.onnx"):
        load_predictor(tmp_path, manifest(), backend="onnx", device=CPU)
    (tmp_path / "model.ts").write_bytes(b"not a torchscript archive")
    with pytest.raises(ModelArtifactError, match="cannot load TorchScript"):
        load_predictor(tmp_path, manifest(), backend="torchscript", device=CPU)


def test_manifest_channel_mismatch_is_refused(model_dir: Path) -> None:
    with pytest.raises(ModelArtifactError, match="channels"):
        load_predictor(model_dir, manifest(channels=15), backend="onnx", device=CPU)


def test_onnx_on_cuda_without_cuda_provider_is_refused(model_dir: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ModelArtifactError, match="CUDAExecutionProvider"):
        OnnxPredictor(model_dir / "model.onnx", device=torch.device("cuda"), gpu_mem_limit_mb=1024)


def test_formula_predictor_checks_its_output_shape() -> None:
    predictor = FormulaPredictor(lambda x: x, out_channels=2)
    with pytest.raises(ValueError, match="expected"):
        predictor(torch.zeros((1, 1, 4, 4, 4)))
    with pytest.raises(ValueError, match="B, 1, X, Y, Z"):
        predictor(torch.zeros((1, 4, 4, 4)))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelArtifactError, match="CUDA is not available") as info:
            resolve_device("cuda")
        assert info.value.code == "device_unavailable"


def test_resolve_precision() -> None:
    assert resolve_precision("auto", CPU) == "float32"
    assert resolve_precision("auto", torch.device("cuda")) == "float16"
    assert resolve_precision("bfloat16", CPU) == "bfloat16"
    with pytest.raises(ValueError):
        resolve_precision("int8", CPU)  # type: ignore[arg-type]


def test_onnx_cuda_preloads_the_pip_cuda_libraries_before_a_session():
    from types import SimpleNamespace

    from service.inference import predictors

    calls = []
    with_cuda = SimpleNamespace(
        get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        preload_dlls=lambda: calls.append("preload"),
    )
    predictors._require_cuda_provider(with_cuda)
    assert calls == ["preload"]

    without_cuda = SimpleNamespace(
        get_available_providers=lambda: ["CPUExecutionProvider"], preload_dlls=lambda: calls.append("x")
    )
    with pytest.raises(ModelArtifactError, match="onnxruntime-gpu"):
        predictors._require_cuda_provider(without_cuda)
    assert calls == ["preload"]
