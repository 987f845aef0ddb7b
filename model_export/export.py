"""Export Swin-X Seg to TorchScript and/or ONNX, with a manifest and a parity check.

The artifacts are first written to a staging folder inside ``out_dir``, checked (eager vs TorchScript
vs ONNX Runtime on one seeded ROI-sized input), and only then renamed into place, manifest last, so a
failed export never leaves half-written or unchecked final files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from model_export.checkpoint import load_checkpoint_and_record, load_into
from model_export.config import SwinXSegConfig, preset_names
from model_export.config import preset as get_preset
from model_export.network import SwinXSeg, seeded_init
from service.errors import CheckpointError, ModelArtifactError
from service.labels import FLARE23_LABELS
from service.manifest import (
    MANIFEST_NAME,
    ONNX_NAME,
    TORCHSCRIPT_NAME,
    ArtifactInfo,
    ModelManifest,
    sha256_of,
)
from service.preprocess_spec import PAPER_ROI_SIZE, PreprocessSpec

log = logging.getLogger(__name__)

FORMATS: dict[str, str] = {"torchscript": TORCHSCRIPT_NAME, "onnx": ONNX_NAME}
DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4  # max |logit difference| allowed between eager and an exported artifact
ONNX_INPUT = "image"
ONNX_OUTPUT = "logits"


@dataclass
class BackendCheck:
    """One backend's run on the parity input: seconds taken and max |logits - eager logits|."""

    backend: str
    seconds: float
    max_abs_diff: float | None = None  # None for eager, the reference


@dataclass
class ExportReport:
    manifest: ModelManifest
    out_dir: Path
    checks: list[BackendCheck] = field(default_factory=list)
    max_abs_logit: float = 0.0
    tolerance: float = PARITY_TOLERANCE
    seconds: float = 0.0


def export_model(
    *,
    checkpoint: Path | None,
    preset: str,
    out_dir: Path,
    formats: Sequence[str] = ("torchscript", "onnx"),
    out_channels: int | None = None,
    random_init: bool = False,
    seed: int = 0,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = PARITY_TOLERANCE,
) -> ModelManifest:
    """Export a checkpoint (or seeded random weights) to ``out_dir``; returns the written manifest.

    Writes ``out_dir/model.ts`` and/or ``out_dir/model.onnx`` (input ``image`` ``(B, 1, *roi)``
    float32, output ``logits`` ``(B, classes, *roi)``, batch axis dynamic; ``roi`` 96^3 unless the
    checkpoint's preprocessing record says otherwise) and ``out_dir/manifest.json``, whose
    ``preprocess`` is the checkpoint's record (the paper's values for a checkpoint without one). Raises ``CheckpointError`` for an unusable checkpoint,
    ``ModelArtifactError`` when an artifact cannot be written or fails the parity check, and
    ``ValueError`` for bad arguments.
    """
    return export_with_report(
        checkpoint=checkpoint,
        preset=preset,
        out_dir=out_dir,
        formats=formats,
        out_channels=out_channels,
        random_init=random_init,
        seed=seed,
        name=name,
        opset=opset,
        tolerance=tolerance,
    ).manifest


def export_with_report(
    *,
    checkpoint: Path | None,
    preset: str,
    out_dir: Path,
    formats: Sequence[str] = ("torchscript", "onnx"),
    out_channels: int | None = None,
    random_init: bool = False,
    seed: int = 0,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportReport:
    """:func:`export_model`, also returning the parity figures and timings (for the CLI's table)."""
    started = time.perf_counter()
    formats = _check_formats(formats)
    if (checkpoint is None) == (not random_init):
        raise ValueError("give exactly one of a checkpoint or random_init=True")
    model, config, source, spec = _build_model(checkpoint, preset, out_channels, random_init, seed)
    roi = spec.roi_size
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelArtifactError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None

    with _staging_dir(out_dir) as staging:
        staged = {fmt: staging / FORMATS[fmt] for fmt in formats}
        if "torchscript" in staged:
            _write_torchscript(model, staged["torchscript"])
        if "onnx" in staged:
            _write_onnx(model, config, staged["onnx"], opset, roi)
        checks, max_logit = _parity(model, config, staged, seed, tolerance, roi)
        manifest = _manifest(config, spec, preset, name or out_dir.name, staged, source, checks)
        for path in staged.values():
            os.replace(path, out_dir / path.name)
        _write_manifest(manifest, out_dir)

    seconds = time.perf_counter() - started
    log.info("exported %s to %s in %.1f s", "+".join(formats), out_dir, seconds)
    return ExportReport(manifest, out_dir, checks, max_logit, tolerance, seconds)


# --- model ------------------------------------------------------------------------------------------
def _check_formats(formats: Sequence[str]) -> list[str]:
    chosen = [f.strip().lower() for f in formats if f.strip()]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise ValueError(f"unknown export format(s) {unknown or formats}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(chosen))


def _build_model(
    checkpoint: Path | None, preset: str, out_channels: int | None, random_init: bool, seed: int
) -> tuple[nn.Module, SwinXSegConfig, str, PreprocessSpec]:
    """The network in eval mode with its weights, its config, a one-line note on where the weights
    came from, and the preprocessing they were trained with (the checkpoint's record, else the paper's)."""
    state, spec = None, None
    if checkpoint is not None:
        log.debug("loading checkpoint %s", checkpoint)
        state, spec = load_checkpoint_and_record(checkpoint)
        head = state.get("out.conv.conv.weight")
        if out_channels is None and head is not None:
            out_channels = int(head.shape[0])  # the checkpoint says how many classes it was trained for
    config = get_preset(preset, out_channels=out_channels)
    if spec is None:
        spec = PreprocessSpec()  # the paper's values: what random weights and published checkpoints get
        if checkpoint is not None:
            log.info(
                "%s has no preprocessing record (the authors' format): the manifest gets the paper's "
                "%s mm spacing, HU window %s and ROI %s", Path(checkpoint).name,
                "x".join(f"{s:g}" for s in spec.target_spacing_mm), list(spec.hu_window), "x".join(map(str, spec.roi_size)),
            )
    model = SwinXSeg(config).eval()
    if state is None:
        seeded_init(model, seed)
        return model, config, f"random init, seed {seed}", spec
    _check_embed_dim(state, config, preset, checkpoint)
    load_into(model, state)
    return model, config, f"checkpoint {Path(checkpoint).name} (sha256 {sha256_of(Path(checkpoint))[:16]})", spec


def _check_embed_dim(
    state: dict[str, Tensor], config: SwinXSegConfig, preset: str, path: Path | None
) -> None:
    """Name the right preset when the checkpoint is of another width (clearer than 300 wrong shapes)."""
    proj = state.get("transformer.patch_embed.proj.weight")
    if proj is None or proj.shape[0] == config.embed_dim:
        return
    fitting = [p for p in preset_names() if get_preset(p).embed_dim == proj.shape[0]]
    hint = f"; use --preset {fitting[0]}" if fitting else ""
    raise CheckpointError(
        f"{path} has embed_dim {proj.shape[0]} but preset {preset!r} has {config.embed_dim}{hint}"
    )


# --- artifacts --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _staging_dir(out_dir: Path) -> Iterator[Path]:
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_torchscript(model: nn.Module, path: Path) -> None:
    started = time.perf_counter()
    try:
        with _quiet():
            scripted = torch.jit.script(model)
            torch.jit.save(scripted, str(path))
    except (RuntimeError, OSError) as exc:
        raise ModelArtifactError(f"TorchScript export failed: {_first_line(exc)}") from None
    log.info(
        "wrote TorchScript (%.1f MB) in %.1f s", path.stat().st_size / 1e6, time.perf_counter() - started
    )


def _write_onnx(model: nn.Module, config: SwinXSegConfig, path: Path, opset: int, roi: Sequence[int]) -> None:
    """Dynamo-based ONNX export with a dynamic batch axis; weights inside the file (no external data)."""
    _require("onnx", "onnxscript")
    started = time.perf_counter()
    # Trace with batch 2: an example batch of 1 may be specialised to a constant.
    example = torch.zeros(2, config.in_channels, *roi)
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"x": {0: batch}},
            )
    except Exception as exc:  # the exporter raises many types; the user needs one line
        raise ModelArtifactError(f"ONNX export failed: {_first_line(exc)}") from None
    _check_onnx_signature(path, config, roi)
    log.info("wrote ONNX (%.1f MB) in %.1f s", path.stat().st_size / 1e6, time.perf_counter() - started)


def _check_onnx_signature(path: Path, config: SwinXSegConfig, roi: Sequence[int]) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = [
        (i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in graph.input
    ]
    outputs = [o.name for o in graph.output]
    expected = [(ONNX_INPUT, ["batch", config.in_channels, *roi])]
    if inputs != expected or outputs != [ONNX_OUTPUT]:
        raise ModelArtifactError(f"ONNX graph has inputs {inputs} and outputs {outputs}, expected {expected}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' progress prints, warnings and log chatter out of the CLI's output."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
    noisy = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in noisy]
    buffer = io.StringIO()
    try:
        for logger in noisy:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(noisy, levels, strict=True):
            logger.setLevel(level)
        if buffer.getvalue().strip():
            log.debug("exporter output:\n%s", buffer.getvalue().rstrip())


def _require(*modules: str) -> None:
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ModelArtifactError(
            f"ONNX export needs {', '.join(missing)}: install the export extra (pip install 'swinxseg[export]')"
        )


# --- parity -----------------------------------------------------------------------------------------
def parity_input(
    config: SwinXSegConfig, seed: int, batch: int = 1, roi: Sequence[int] = PAPER_ROI_SIZE
) -> Tensor:
    """A seeded ``(batch, in, *roi)`` input in [0, 1], the range of a windowed, scaled CT."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(batch, config.in_channels, *roi, generator=gen)


def _parity(
    model: nn.Module,
    config: SwinXSegConfig,
    staged: dict[str, Path],
    seed: int,
    tolerance: float,
    roi: Sequence[int],
) -> tuple[list[BackendCheck], float]:
    x = parity_input(config, seed, roi=roi)
    started = time.perf_counter()
    with torch.inference_mode():
        reference = model(x).numpy()
    checks = [BackendCheck("eager", time.perf_counter() - started)]
    if not np.isfinite(reference).all():
        raise ModelArtifactError("the eager model produces NaN or infinite logits on the parity input")
    runners = {"torchscript": _run_torchscript, "onnx": _run_onnxruntime}
    for fmt, path in staged.items():
        started = time.perf_counter()
        output = runners[fmt](path, x.numpy())
        diff = float(np.max(np.abs(output - reference))) if output.shape == reference.shape else float("inf")
        check = BackendCheck(fmt if fmt != "onnx" else "onnxruntime", time.perf_counter() - started, diff)
        checks.append(check)
        log.info("parity %s: max |diff| %.3g in %.1f s", check.backend, diff, check.seconds)
        if not diff <= tolerance:  # also catches NaN
            raise ModelArtifactError(
                f"{check.backend} output differs from the eager model by {diff:.3g} (> {tolerance:g}); "
                "nothing was written"
            )
    return checks, float(np.max(np.abs(reference)))


def _run_torchscript(path: Path, x: np.ndarray) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch >= 2.10
            module = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    except RuntimeError as exc:
        raise ModelArtifactError(f"the exported TorchScript model does not run: {_first_line(exc)}") from None


def _run_onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([ONNX_OUTPUT], {ONNX_INPUT: x})[0]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelArtifactError(
            f"the exported ONNX model does not run in ONNX Runtime: {_first_line(exc)}"
        ) from None


# --- manifest ---------------------------------------------------------------------------------------
def labels_for(out_channels: int) -> dict[int, str]:
    """FLARE-23 names for a 15-class model, ``label_N`` otherwise."""
    if out_channels == len(FLARE23_LABELS):
        return dict(FLARE23_LABELS)
    return {i: f"label_{i}" for i in range(out_channels)}


def _manifest(
    config: SwinXSegConfig,
    spec: PreprocessSpec,
    preset: str,
    name: str,
    staged: dict[str, Path],
    source: str,
    checks: list[BackendCheck],
) -> ModelManifest:
    parity = ", ".join(f"{c.backend} {c.max_abs_diff:.2g}" for c in checks if c.max_abs_diff is not None)
    return ModelManifest(
        name=name,
        preset=preset,
        architecture=config.to_architecture(),
        labels=labels_for(config.out_channels),
        preprocess=spec,
        artifacts={
            fmt: ArtifactInfo(file=path.name, sha256=sha256_of(path), format=fmt)
            for fmt, path in staged.items()
        },
        versions=_versions(),
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
        notes=f"weights: {source}; parity max |logit diff| vs eager: {parity}",
    )


def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    for package in ("onnx", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        versions["swinxseg"] = metadata.version("swinxseg")
    except metadata.PackageNotFoundError:
        from service import __version__

        versions["swinxseg"] = __version__
    return versions


def _write_manifest(manifest: ModelManifest, out_dir: Path) -> None:
    """Write ``manifest.json`` atomically (temp file in the same folder, then rename)."""
    final = out_dir / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(manifest.model_dump_json(indent=2) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give it a normal file's mode
        os.replace(tmp, final)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ModelArtifactError(f"cannot write {final}: {exc.strerror or exc}") from None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
