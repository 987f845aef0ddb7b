"""swinxseg on one case, in its own process, measured exactly like ``bench.baseline``.

It does what ``swinxseg batch`` does for one case (load the model, read, segment, write the
mask) without the batch report, so its wall clock is comparable with the baseline's: both count
model load, reading, inference, undoing the geometry and writing.

    python -m bench.ours IN.nii.gz OUT.nii.gz --model weights/demo --device cpu

The last stdout line is ``BENCH_RESULT {json}`` (see ``bench.probes``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench.probes import NvmlSampler, emit_result, load_average, process_figures, stage, torch_gpu_peaks
from service.heap import return_large_blocks_to_the_os

log = logging.getLogger(__name__)


def run_ours(input_path: Path | str, output_path: Path | str, model_dir: Path | str, device: str = "cpu",
             *, backend: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """Segment one CT with ``service.segmenter.Segmenter``; same figures as ``run_baseline``.

    ``seconds`` runs from model load to mask written (s); ``stage_seconds`` adds the
    segmenter's own stage split (preprocess / infer / postprocess); memory in MB.
    """
    load_at_start = load_average()
    return_large_blocks_to_the_os()  # the heap policy every ``swinxseg`` command starts with
    with NvmlSampler() as sampler:  # before the Segmenter touches CUDA, so the context counts
        result = _run(Path(input_path), Path(output_path), Path(model_dir), device, backend, precision)
    result.update(process_figures(load_at_start))
    result.update(sampler.figures())
    result.update(torch_gpu_peaks(device))
    return result


def _run(input_path: Path, output_path: Path, model_dir: Path, device: str, backend: str,
         precision: str) -> dict[str, Any]:
    # Imported here so the probes are running before torch/ONNX Runtime set anything up.
    from service.io.readers import read_volume
    from service.io.writers import write_mask
    from service.segmenter import Segmenter
    from service.settings import Settings

    sync = device.startswith("cuda")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    settings = Settings(model_dir=model_dir, device=device, backend=backend, inference_precision=precision)
    with stage(seconds, "model_load", sync_cuda=sync):
        segmenter = Segmenter(settings)
    with stage(seconds, "read"):
        volume = read_volume(input_path, max_voxels=settings.max_input_voxels)
    with stage(seconds, "segment", sync_cuda=sync):
        segmented = segmenter.segment(volume)
    with stage(seconds, "write"):
        write_mask(segmented.mask, output_path)
    metrics = segmented.metrics
    seconds.update({f"segment.{name}": value for name, value in metrics.seconds.items()})
    return {
        "pipeline": "ours",
        "input": str(input_path),
        "output": str(output_path),
        "device": metrics.device,
        "backend": metrics.backend,
        "precision": metrics.precision,
        "input_shape": list(metrics.input_shape),
        "model_grid_shape": list(metrics.model_grid_shape),
        "windows_run": metrics.windows_run,
        "windows_skipped": metrics.windows_skipped,
        # OpenVINO only: whether the model load imported a compiled blob (None: no compile cache).
        "openvino_from_cache": getattr(segmenter.predictor, "from_cache", None),
        "seconds": round(time.perf_counter() - started, 4),
        "stage_seconds": seconds,
        "segmenter_metrics": metrics.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ours", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="input CT (any format swinxseg reads)")
    parser.add_argument("output", type=Path, help="where the uint8 mask goes")
    parser.add_argument("--model", type=Path, required=True, help="exported model folder")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torchscript", "onnx", "openvino"])
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="asked for; the result's precision says what ran")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    emit_result(run_ours(args.input, args.output, args.model, args.device, backend=args.backend,
                         precision=args.precision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
