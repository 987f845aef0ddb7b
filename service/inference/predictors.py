"""Inference backends behind one small protocol.

A predictor maps a batch of windows ``(B, 1, Rx, Ry, Rz)`` float32 on ``predictor.device`` to
logits ``(B, C, Rx, Ry, Rz)`` (float16 or float32) on the same device. It knows nothing about
sliding windows or stitching; the stitcher only calls it.

Backends:
- ``TorchScriptPredictor``: ``model.ts``; autocast float16/bfloat16 on CUDA.
- ``OnnxPredictor``: ``model.onnx`` on ONNX Runtime; on CUDA the input and output stay on the
  device through IO binding on torch tensors, and the ORT arena is capped.
- ``OpenVinoPredictor`` (``openvino_backend.py``): ``model.onnx`` compiled by OpenVINO for the
  CPU, float32 or bfloat16 (the latter only where the CPU has it).
- ``FormulaPredictor``: a Python function, for tests and benchmarks without a model file.

``load_predictor`` picks a backend for a model folder; nothing is loaded at import time.

The ``auto`` rule (``choose_backend``): on CUDA, TorchScript (autocast) then ONNX Runtime; on the
CPU, the fastest installed first: OpenVINO (when ``openvino`` is importable and ``model.onnx``
exists), then ONNX Runtime (``onnxruntime`` importable, ``model.onnx``), then TorchScript. Measured
order on the CPU (bench/README.md): OpenVINO ~0.5x ONNX Runtime's seconds per window, ONNX
Runtime faster than TorchScript.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

from service.errors import ModelArtifactError
from service.inference.openvino_backend import OpenVinoPredictor, openvino_installed
from service.manifest import ONNX_NAME, TORCHSCRIPT_NAME, ModelManifest

logger = logging.getLogger(__name__)

Precision = Literal["auto", "float32", "float16", "bfloat16"]
Backend = Literal["auto", "torchscript", "onnx", "openvino"]

_AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_ORT_TO_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}
# Substrings of ONNX Runtime's messages when its CUDA arena cannot grant a buffer.
_ORT_OOM_MARKERS = ("failed to allocate memory", "out of memory", "bfcarena")


@runtime_checkable
class Predictor(Protocol):
    """What the stitcher needs from a backend."""

    out_channels: int
    device: torch.device
    name: str
    precision: str  # the arithmetic the network really runs in: float32, float16 or bfloat16

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 1, Rx, Ry, Rz) float32 on ``device`` -> (B, C, Rx, Ry, Rz) logits on ``device``."""
        ...


def _check_batch(batch: torch.Tensor) -> None:
    if batch.ndim != 5 or batch.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, X, Y, Z) batch, got shape {tuple(batch.shape)}")


class FormulaPredictor:
    """Wraps ``fn(batch (B,1,R,R,R)) -> (B,C,R,R,R)``; for tests (e.g. ``lambda x: x + 1``)."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        out_channels: int,
        device: torch.device | str = "cpu",
        *,
        name: str = "formula",
        precision: str = "float32",
    ) -> None:
        self.fn = fn
        self.out_channels = int(out_channels)
        self.device = torch.device(device)
        self.name = name
        self.precision = precision

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _check_batch(batch)
        with torch.inference_mode():
            out = self.fn(batch.to(self.device))
        expected = (batch.shape[0], self.out_channels, *batch.shape[2:])
        if tuple(out.shape) != expected:
            raise ValueError(f"formula returned shape {tuple(out.shape)}, expected {expected}")
        return out


class TorchScriptPredictor:
    """A TorchScript export (``model.ts``) run under ``inference_mode``.

    float16/bfloat16 use autocast on CUDA (weights stay float32, matmuls/convs run in half).
    On the CPU only bfloat16 autocast is used; float16 there falls back to float32 with a
    warning, because CPU float16 kernels are slower than float32.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        device: torch.device | str,
        out_channels: int,
        precision: Precision = "float32",
    ) -> None:
        self.device = torch.device(device)
        self.out_channels = int(out_channels)
        self.precision = resolve_precision(precision, self.device)
        self.name = f"torchscript-{self.precision}"
        try:
            with warnings.catch_warnings():
                # torch >= 2.10 flags TorchScript as deprecated; loading still works, and the
                # warning would repeat in every service log without telling the operator anything.
                warnings.filterwarnings(
                    "ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning
                )
                self.module = torch.jit.load(str(path), map_location=self.device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelArtifactError(f"cannot load TorchScript model {path}: {exc}") from None
        self.module.eval()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _check_batch(batch)
        batch = batch.to(self.device, torch.float32)
        autocast_dtype = _AUTOCAST_DTYPES.get(self.precision)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            return self.module(batch)


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """The precision TorchScript really runs for a request: the one place a request is resolved.

    ``auto`` -> float16 on CUDA, float32 elsewhere. float16 on the CPU runs float32 (CPU float16
    kernels are slower than float32), with a warning; bfloat16 autocast runs on either device.
    Raises ``ValueError`` for any other value.
    """
    if precision == "auto":
        return "float16" if device.type == "cuda" else "float32"
    if precision not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"precision must be auto, float32, float16 or bfloat16, got {precision!r}")
    if precision == "float16" and device.type != "cuda":
        logger.warning("float16 requested on %s: running float32 (CPU float16 is slow)", device)
        return "float32"
    return precision


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelArtifactError(
            f"the ONNX backend needs onnxruntime, which is not importable: {exc}"
        ) from None
    return onnxruntime


class OnnxPredictor:
    """An ONNX export (``model.onnx``) on ONNX Runtime.

    CUDA: CUDAExecutionProvider with ``gpu_mem_limit`` (its arena never grows past it) and
    ``kSameAsRequested`` (grow by exactly what is asked, not by doubling, so the cap is not
    blown by one over-sized extension). Input and output are bound to torch CUDA tensors by
    pointer, so windows never round-trip through the host. CPU: plain numpy in and out (zero copy
    through ``torch.from_numpy``).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        device: torch.device | str,
        gpu_mem_limit_mb: int | None = None,
        threads: int = 0,
        out_channels: int | None = None,
    ) -> None:
        ort = _import_onnxruntime()
        device = torch.device(device)
        if device.type == "cuda":
            _require_cuda_provider(ort)
            if device.index is None:
                # Pin the index: ORT's device_id and the IO binding must name the same GPU.
                device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.session = _make_session(ort, Path(path), self.device, gpu_mem_limit_mb, threads)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = _ORT_TO_TORCH.get(inp.type, torch.float32)
        self.output_dtype = _ORT_TO_TORCH.get(out.type)
        if self.output_dtype is None:
            raise ModelArtifactError(
                f"{path}: unsupported output type {out.type} (expected float or float16)"
            )
        self.out_channels = _onnx_out_channels(out.shape, out_channels, path)
        self.name = f"onnx-{'cuda' if self.device.type == 'cuda' else 'cpu'}"
        # An ONNX graph runs in the precision it was exported in, whatever was asked for.
        self.precision = "float16" if self.input_dtype == torch.float16 else "float32"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _check_batch(batch)
        batch = batch.to(self.device, self.input_dtype).contiguous()
        if self.device.type == "cuda":
            return self._run_cuda(batch)
        result = self.session.run([self.output_name], {self.input_name: batch.numpy()})[0]
        return torch.from_numpy(result)

    def _run_cuda(self, batch: torch.Tensor) -> torch.Tensor:
        index = self.device.index
        out = torch.empty(
            (batch.shape[0], self.out_channels, *batch.shape[2:]), dtype=self.output_dtype, device=self.device
        )
        binding = self.session.io_binding()
        binding.bind_input(
            self.input_name, "cuda", index, _numpy_dtype(batch.dtype), tuple(batch.shape), batch.data_ptr()
        )
        binding.bind_output(
            self.output_name, "cuda", index, _numpy_dtype(out.dtype), tuple(out.shape), out.data_ptr()
        )
        # ORT runs on its own CUDA stream: the input written by torch must be complete first.
        # Run() synchronises ORT's stream before returning, so ``out`` is ready afterwards.
        torch.cuda.current_stream(self.device).synchronize()
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # ORT raises its own pybind exception types; only OOM is translated
            if any(marker in str(exc).lower() for marker in _ORT_OOM_MARKERS):
                # Let the stitcher's batch-halving treat ORT arena exhaustion like torch's OOM.
                raise torch.cuda.OutOfMemoryError(f"ONNX Runtime CUDA allocation failed: {exc}") from exc
            raise
        return out


def _numpy_dtype(dtype: torch.dtype) -> type:
    return {torch.float32: np.float32, torch.float16: np.float16}[dtype]


def _onnx_out_channels(shape: list, requested: int | None, path: Path | str) -> int:
    static = shape[1] if len(shape) == 5 and isinstance(shape[1], int) else None
    if requested is not None and static is not None and static != requested:
        raise ModelArtifactError(f"{path} outputs {static} channels, the manifest says {requested}")
    channels = requested if requested is not None else static
    if channels is None:
        raise ModelArtifactError(f"{path} has a dynamic channel axis; pass out_channels explicitly")
    return int(channels)


def _require_cuda_provider(ort) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelArtifactError(
            "ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu) - "
            "use the TorchScript backend or the CPU device"
        )
    # The image has no system CUDA: CUDA and cuDNN are NVIDIA's pip packages that torch loads.
    # preload_dlls (onnxruntime-gpu >= 1.21) loads the same ones for the CUDA provider: torch's when
    # compatible, else those of the nvidia site-packages, else the default library path.
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


def _make_session(ort, path: Path, device: torch.device, gpu_mem_limit_mb: int | None, threads: int):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(int(threads), 0)  # 0 = ORT's default (all physical cores)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if device.type == "cpu":
        # ORT's memory-pattern planner keeps every activation buffer of a 96^3 window alive
        # between runs (one window of the tiny network: 1053 MB peak RSS with it, 637 MB without).
        # The arena itself is worth keeping: turning it off too saves only ~70 MB more but
        # nearly doubles the time per window (0.6 s -> 1.1 s measured on 2 cores).
        options.enable_cpu_mem_arena = True
        options.enable_mem_pattern = False
        # Basic graph optimisations only: the extended/layout ones (blocked NCHWc layouts for the
        # 3D convolutions) add converted copies of the activations, +156 MB of RSS for one window
        # of the tiny network (825 -> 669 MB) at the same 0.55-0.57 s per window on 2 cores.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    providers: list = ["CPUExecutionProvider"]
    if device.type == "cuda":
        cuda_options = {"device_id": device.index, "arena_extend_strategy": "kSameAsRequested"}
        if gpu_mem_limit_mb:
            cuda_options["gpu_mem_limit"] = int(gpu_mem_limit_mb) * 2**20
        providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT's pybind exceptions share no useful base class
        raise ModelArtifactError(f"cannot load ONNX model {path}: {exc}") from None
    if device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        # ORT silently drops a provider whose libraries (CUDA/cuDNN) fail to load.
        raise ModelArtifactError("ONNX Runtime could not initialise CUDA (check CUDA/cuDNN libraries)")
    return session


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` (or ``cuda:N``) must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelArtifactError(
                f"device {name!r} requested but CUDA is not available to torch here",
                code="device_unavailable",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelArtifactError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible",
                code="device_unavailable",
            )
    elif device.type != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return device


def _artifact_path(model_dir: Path, manifest: ModelManifest, fmt: str, default_name: str) -> Path:
    for key, info in manifest.artifacts.items():
        if key == fmt or info.format == fmt:
            return model_dir / info.file
    return model_dir / default_name


def choose_backend(backend: Backend, device: torch.device, ts_path: Path, onnx_path: Path) -> str:
    """The backend that will run: the requested one (its artifact must exist) or the ``auto`` rule.

    ``auto``: CUDA -> torchscript, onnx; CPU -> openvino (installed), onnx (onnxruntime installed),
    torchscript; the first whose artifact exists. Raises ``ModelArtifactError`` (missing artifact)
    or ``ValueError`` (unknown backend).
    """
    paths = {"torchscript": ts_path, "onnx": onnx_path, "openvino": onnx_path}
    if backend in paths:
        if not paths[backend].is_file():
            raise ModelArtifactError(f"backend {backend!r} requested but {paths[backend]} does not exist")
        return backend
    if backend != "auto":
        raise ValueError(f"backend must be auto, torchscript, onnx or openvino, got {backend!r}")
    if device.type == "cuda":
        # TorchScript is the fast path on CUDA (autocast); OpenVINO has no NVIDIA plugin.
        preferred = ["torchscript", "onnx"]
    else:
        installed = {"openvino": openvino_installed(), "onnx": _onnxruntime_installed(), "torchscript": True}
        preferred = [b for b in ("openvino", "onnx", "torchscript") if installed[b]]
    for candidate in preferred:
        if paths[candidate].is_file():
            return candidate
    raise ModelArtifactError(f"model folder {ts_path.parent} has neither {ts_path.name} nor {onnx_path.name}")


def _onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def load_predictor(
    model_dir: Path | str,
    manifest: ModelManifest,
    *,
    backend: Backend = "auto",
    device: torch.device,
    precision: Precision = "auto",
    gpu_mem_cap_mb: int | None = None,
    threads: int = 0,
    openvino_cache_dir: Path | None = None,
) -> Predictor:
    """Load the model in ``model_dir`` with the chosen backend.

    ``auto``: see ``choose_backend``. ``gpu_mem_cap_mb`` caps ONNX Runtime's CUDA arena;
    ``threads`` (> 0) sets the intra-op threads of any backend. ONNX Runtime runs the precision
    the graph was exported in; ``precision`` applies to TorchScript and OpenVINO (float32 or
    bfloat16 on the CPU; the predictor's ``precision`` says what really runs).
    ``openvino_cache_dir``: OpenVINO's compile cache folder (None = compile at every load).
    """
    model_dir = Path(model_dir)
    ts_path = _artifact_path(model_dir, manifest, "torchscript", TORCHSCRIPT_NAME)
    onnx_path = _artifact_path(model_dir, manifest, "onnx", ONNX_NAME)
    chosen = choose_backend(backend, device, ts_path, onnx_path)
    logger.info("loading %s backend on %s from %s", chosen, device, model_dir)
    if chosen == "openvino":
        return OpenVinoPredictor(
            onnx_path,
            device=device,
            out_channels=manifest.out_channels,
            roi=tuple(manifest.roi_size),
            precision=resolve_precision(precision, device),
            threads=threads,
            cache_dir=openvino_cache_dir,
        )
    if chosen == "onnx":
        return OnnxPredictor(
            onnx_path,
            device=device,
            gpu_mem_limit_mb=gpu_mem_cap_mb,
            threads=threads,
            out_channels=manifest.out_channels,
        )
    if threads > 0 and device.type == "cpu":
        # torch's intra-op pool is process-wide; the caller asked for this many threads.
        torch.set_num_threads(threads)
    return TorchScriptPredictor(
        ts_path, device=device, out_channels=manifest.out_channels, precision=precision
    )
