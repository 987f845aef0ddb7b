"""The authors' inference pipeline, rebuilt with stock MONAI: the baseline we must beat.

It follows /work/shared/reference/SEED_PIPELINE.md steps 1-8 and 10 literally, including the
parts that cost time and memory on purpose (full-resolution float32 stitching on the host, the
15-channel map inverted back to the input grid, the model loaded per run), with one deliberate
fix: step 9's identity affine is replaced by the input's own geometry, so the two masks can be
compared voxel for voxel and the baseline is not "faster" by skipping anything.

It reads the preprocessing parameters (target spacing, HU window, ROI) from the same
``manifest.json`` our service reads, and runs the same exported TorchScript weights, so the only
differences between the two pipelines are the ones the product claims.

Run it as its own process so its peak RSS is its own::

    python -m bench.baseline IN.nii.gz OUT.nii.gz --model weights/demo --device cpu

The last stdout line is ``BENCH_RESULT {json}`` (see ``bench.probes``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from bench.probes import NvmlSampler, emit_result, load_average, process_figures, stage, torch_gpu_peaks
from service.manifest import TORCHSCRIPT_NAME, ModelManifest, load_manifest

log = logging.getLogger(__name__)

# Step 7's fixed settings (the paper's, not ours): one window per forward pass, half overlap.
SW_BATCH_SIZE = 1
OVERLAP = 0.5
SIGMA_SCALE = 0.125


def build_transforms(manifest: ModelManifest):
    """Steps 1-6 as one MONAI ``Compose`` over the key ``image`` (also what ``Invertd`` undoes)."""
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    low, high = manifest.hu_window
    return Compose([
        LoadImaged(keys="image", dtype=np.float32),
        EnsureChannelFirstd(keys="image"),
        # The stock default labels, spelled out so MONAI does not warn about a future change.
        Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys="image", pixdim=tuple(manifest.target_spacing_mm), mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        # Default selector (value > 0 after scaling, i.e. HU above the window's low end): keeps the
        # CT table and anything else above -250 HU, which is part of what the baseline pays for.
        CropForegroundd(keys="image", source_key="image"),
        SpatialPadd(keys="image", spatial_size=tuple(manifest.roi_size)),
    ])


def load_torchscript(model_dir: Path, manifest: ModelManifest, device: torch.device) -> torch.jit.ScriptModule:
    """The exported TorchScript artifact, in float32 eval mode on ``device`` (step 10)."""
    info = manifest.artifacts.get("torchscript")
    path = Path(model_dir) / (info.file if info is not None else TORCHSCRIPT_NAME)
    model = torch.jit.load(str(path), map_location=device)
    return model.float().eval()


class CountingPredictor:
    """Calls the model and counts windows, so the baseline's window count is MONAI's own grid."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.windows = 0

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        self.windows += int(window.shape[0])
        return self.model(window)


def run_baseline(input_path: Path | str, output_path: Path | str, model_dir: Path | str,
                 device: str = "cpu") -> dict[str, Any]:
    """Segment one NIfTI with the authors' pipeline; write a uint8 mask on the input's grid.

    Returns the figures the benchmark compares: ``seconds`` (wall clock from model load to mask
    written, in s), ``stage_seconds``, ``peak_rss_mb`` (this process), GPU peaks in MB (None on
    the CPU), ``windows`` (windows MONAI ran over the padded crop), and the grid shapes.
    """
    load_at_start = load_average()
    with NvmlSampler() as sampler:  # started before any CUDA call: the context counts
        result = _run(Path(input_path), Path(output_path), Path(model_dir), torch.device(device))
    result.update(process_figures(load_at_start))
    result.update(sampler.figures())
    result.update(torch_gpu_peaks(device))
    return result


def _run(input_path: Path, output_path: Path, model_dir: Path, device: torch.device) -> dict[str, Any]:
    sync = device.type == "cuda"
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with stage(seconds, "model_load", sync_cuda=sync):
        manifest = load_manifest(model_dir)
        predictor = CountingPredictor(load_torchscript(model_dir, manifest, device))
    transforms = build_transforms(manifest)
    with stage(seconds, "preprocess"):
        data = transforms({"image": str(input_path)})
    padded_shape = tuple(int(s) for s in data["image"].shape[1:])
    with stage(seconds, "infer", sync_cuda=sync), torch.no_grad():
        data["pred"] = _sliding_window(data["image"], predictor, manifest, device)
    with stage(seconds, "invert"):
        labels = _invert_to_labels(data, transforms)
        del data
    with stage(seconds, "write"):
        reference = nib.load(str(input_path))
        _write_on_input_grid(labels, reference, output_path)
    return {
        "pipeline": "baseline",
        "input": str(input_path),
        "output": str(output_path),
        "device": str(device),
        "backend": "torchscript",
        "input_shape": list(reference.shape[:3]),
        "padded_crop_shape": list(padded_shape),
        "windows": predictor.windows,
        "seconds": round(time.perf_counter() - started, 4),
        "stage_seconds": seconds,
    }


def _sliding_window(image: torch.Tensor, predictor: CountingPredictor, manifest: ModelManifest,
                    device: torch.device) -> torch.Tensor:
    """Step 7: windows on ``device``, every prediction stitched on the host in float32."""
    from monai.inferers import sliding_window_inference

    scores = sliding_window_inference(
        image.unsqueeze(0),
        roi_size=tuple(manifest.roi_size),
        sw_batch_size=SW_BATCH_SIZE,
        predictor=predictor,
        overlap=OVERLAP,
        mode="gaussian",
        sigma_scale=SIGMA_SCALE,
        sw_device=device,
        device="cpu",
    )
    return scores[0].float()  # (C, X, Y, Z); still a MetaTensor carrying the image's geometry


def _invert_to_labels(data: dict, transforms) -> np.ndarray:
    """Step 8: invert the whole chain on the C-channel map (nearest), then argmax to uint8."""
    from monai.transforms import Invertd

    inverted = Invertd(keys="pred", transform=transforms, orig_keys="image", nearest_interp=True)(data)
    scores = inverted["pred"]
    return torch.argmax(torch.as_tensor(scores), dim=0).to(torch.uint8).numpy()


def _write_on_input_grid(labels: np.ndarray, reference: nib.Nifti1Image, output_path: Path) -> None:
    # Step 9 fixed: the input's affine and header (qform and sform), never np.eye(4).
    if labels.shape != tuple(reference.shape[:3]):
        raise RuntimeError(f"baseline mask shape {labels.shape} != input shape {reference.shape[:3]}")
    image = nib.Nifti1Image(labels, reference.affine, header=reference.header)
    image.set_data_dtype(np.uint8)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(output_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="input CT (NIfTI)")
    parser.add_argument("output", type=Path, help="where the uint8 mask goes")
    parser.add_argument("--model", type=Path, required=True, help="exported model folder (model.ts + manifest.json)")
    parser.add_argument("--device", default="cpu", help="device that runs the windows: cpu or cuda")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    emit_result(run_baseline(args.input, args.output, args.model, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
