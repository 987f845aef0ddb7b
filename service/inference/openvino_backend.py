"""The OpenVINO backend: the exported ``model.onnx`` compiled by OpenVINO for the CPU.

Why OpenVINO next to ONNX Runtime: on the CPU our time is almost all network, and OpenVINO's CPU
plugin runs the 3D convolutions and attention of Swin-X Seg faster than ONNX Runtime (the tiny
network: ~0.5x ORT's seconds per 96^3 window on 2 AVX2 cores, bench/README.md), and it can run
bfloat16 on CPUs that have it (AVX512-BF16 or AMX). It reads the ONNX export directly, so no
extra artifact is needed.

Precision: OpenVINO's own default on a bfloat16 CPU is bfloat16, silently. We always set
``INFERENCE_PRECISION_HINT`` explicitly so the precision reported in the metrics is the one that
ran: float32 unless bfloat16 was asked for *and* the CPU lists BF16 in its
``OPTIMIZATION_CAPABILITIES``; otherwise float32 with a warning in the log.

Nothing is imported at module import time; ``openvino`` is imported when a predictor is built.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

import torch

from service.errors import ModelArtifactError

logger = logging.getLogger(__name__)

# Our precision names -> OpenVINO's INFERENCE_PRECISION_HINT values.
_OV_PRECISION = {"float32": "f32", "bfloat16": "bf16"}


def openvino_installed() -> bool:
    """Whether ``openvino`` can be imported, without importing it (the ``auto`` backend rule)."""
    return importlib.util.find_spec("openvino") is not None


def _import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise ModelArtifactError(f"the OpenVINO backend needs openvino, which is not importable: {exc}") from None
    return openvino


def cpu_capabilities(core: Any) -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU, e.g. ``['FP32', 'BF16', 'INT8', ...]``."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def resolve_openvino_precision(resolved: str, capabilities: list[str]) -> str:
    """What OpenVINO will run for a precision already resolved for the CPU (float32 or bfloat16).

    bfloat16 only where the CPU lists ``BF16``; otherwise float32, with a warning that names the
    CPU's capabilities. Raises ``ValueError`` for anything but float32/bfloat16.
    """
    if resolved not in _OV_PRECISION:
        raise ValueError(f"OpenVINO runs float32 or bfloat16 on the CPU, got {resolved!r}")
    if resolved == "bfloat16" and "BF16" not in capabilities:
        logger.warning(
            "bfloat16 requested but this CPU has no bfloat16 support (OpenVINO capabilities: %s): running float32",
            ", ".join(capabilities) or "none",
        )
        return "float32"
    return resolved


class OpenVinoPredictor:
    """``model.onnx`` compiled by OpenVINO's CPU plugin; one window per inference request.

    The model is reshaped to a static ``(1, 1, *roi)`` input before compiling: with the exported
    dynamic batch axis OpenVINO keeps buffers for any shape, 785 vs 561 MB peak RSS for one window
    of the tiny network at the same speed (measured on 2 cores). A batch of B windows runs as B
    requests into one preallocated output (on the CPU a bigger batch adds memory, not speed).

    Args:
        path: the ONNX file. device: must be the CPU. out_channels: the manifest's channel count.
        roi: the window size (voxels). precision: float32 or bfloat16 as resolved for the CPU
            (``resolve_precision``); bfloat16 falls back to float32 where the CPU lacks it.
        threads: > 0 sets ``INFERENCE_NUM_THREADS``; 0 = OpenVINO's default (all cores).
        cache_dir: OpenVINO's compile cache folder (``CACHE_DIR``, see ``openvino_cache.py``);
            None = compile every time. ``from_cache`` then says whether this load imported a
            cached blob (True), compiled one (False), or ran without a cache (None).
    Raises ``ModelArtifactError`` (not installed, not the CPU, unreadable model, channel mismatch).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        device: torch.device | str,
        out_channels: int,
        roi: tuple[int, int, int],
        precision: str = "float32",
        threads: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type != "cpu":
            raise ModelArtifactError(
                f"the OpenVINO backend runs on the CPU only, not {self.device} (use --device cpu or another backend)"
            )
        ov = _import_openvino()
        core = ov.Core()
        self.capabilities = cpu_capabilities(core)
        wanted = resolve_openvino_precision(precision, self.capabilities)
        self.out_channels = int(out_channels)
        self.roi = tuple(int(r) for r in roi)
        self.name = "openvino-cpu"
        started = time.perf_counter()
        self._compiled, self.from_cache = _compile(
            core, Path(path), self.roi, self.out_channels, wanted, threads, cache_dir
        )
        self.compile_seconds = round(time.perf_counter() - started, 3)
        # What the compiled model says it runs is what the metrics report, not what was asked.
        self.precision = _compiled_precision(self._compiled)
        if self.precision != wanted:
            logger.warning("OpenVINO compiled %s although %s was asked for", self.precision, wanted)
        self._request = self._compiled.create_infer_request()
        cache = {None: "no compile cache", True: f"imported from {cache_dir}", False: f"compiled, cached in {cache_dir}"}
        logger.info(
            "OpenVINO %s on %s: %s (asked for %s), read + %s in %.1f s",
            ov.get_version(), core.get_property("CPU", "FULL_DEVICE_NAME"), self.precision, precision,
            cache[self.from_cache], self.compile_seconds,
        )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 5 or batch.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, X, Y, Z) batch, got shape {tuple(batch.shape)}")
        if tuple(batch.shape[2:]) != self.roi:
            raise ValueError(f"OpenVINO model compiled for {self.roi} windows, got {tuple(batch.shape[2:])}")
        batch = batch.to(self.device, torch.float32).contiguous()
        out = torch.empty((batch.shape[0], self.out_channels, *self.roi), dtype=torch.float32)
        out_np = out.numpy()
        inputs = batch.numpy()
        for i in range(batch.shape[0]):
            # share_inputs: no copy of the window; the output tensor is OpenVINO's own buffer,
            # overwritten by the next request, so it is copied once into ``out``.
            self._request.infer({0: inputs[i : i + 1]}, share_inputs=True, share_outputs=True)
            out_np[i] = self._request.get_output_tensor(0).data[0]
        return out


def _compile(core: Any, path: Path, roi: tuple[int, ...], channels: int, precision: str, threads: int,
             cache_dir: Path | None) -> tuple[Any, bool | None]:
    """The compiled model and whether it came from the cache (None: no cache)."""
    try:
        model = core.read_model(str(path))
        model.reshape([1, 1, *roi])
    except Exception as exc:  # OpenVINO's exceptions are plain RuntimeErrors from its C++ core
        raise ModelArtifactError(f"cannot load ONNX model {path} with OpenVINO: {exc}") from None
    shape = model.outputs[0].get_partial_shape()
    static = shape[1].get_length() if shape.rank.get_length() == 5 and shape[1].is_static else None
    if static is not None and static != channels:
        raise ModelArtifactError(f"{path} outputs {static} channels, the manifest says {channels}")
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],  # explicit: see the module docstring
        "PERFORMANCE_HINT": "LATENCY",  # one stream using every core: one window at a time
    }
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir is not None:
        try:
            compiled = core.compile_model(model, "CPU", {**config, "CACHE_DIR": str(cache_dir)})
            return compiled, bool(compiled.get_property("LOADED_FROM_CACHE"))
        except Exception as exc:
            # A cache is an optimisation: a folder that broke since start-up (disk full, removed)
            # must not stop the model from loading.
            logger.warning("OpenVINO compile cache %s unusable (%s): compiling without it", cache_dir, exc)
    try:
        return core.compile_model(model, "CPU", config), None
    except Exception as exc:
        raise ModelArtifactError(f"OpenVINO cannot compile {path} for the CPU: {exc}") from None



def _compiled_precision(compiled: Any) -> str:
    type_name = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    by_ov_name = {ov_name: ours for ours, ov_name in _OV_PRECISION.items()}
    return by_ov_name.get(type_name, type_name)
