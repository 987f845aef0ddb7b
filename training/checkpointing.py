"""Training checkpoints in the published format, written atomically, and exact resumption.

A checkpoint is ``{"state_dict", "optimizer", "scheduler", "step", "rng", "config", "history",
"best", "preprocess"}``: the ``state_dict`` key is what published Swin-X Seg checkpoints carry, so
``model_export.checkpoint.load_checkpoint`` (and ``swinxseg export``) read our files unchanged;
``preprocess`` is the ``PreprocessSpec`` the run trained with, which export writes into the manifest.
Everything is plain tensors and Python types, so ``torch.load(..., weights_only=True)`` loads it.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from model_export.checkpoint import PREPROCESS_RECORD_KEY
from service.errors import CheckpointError
from service.preprocess_spec import PreprocessSpec

log = logging.getLogger(__name__)

LAST_NAME = "last.pt"
BEST_NAME = "best.pt"


def capture_rng(sampler_state: dict) -> dict:
    """Every random state a training step depends on: torch, numpy's and Python's globals, the sampler."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
        "sampler": sampler_state,
    }


def _numpy_state() -> tuple:
    # The key is a uint32 array; as a list of ints the state loads with weights_only=True.
    name, key, pos, has_gauss, cached = np.random.get_state()
    return (name, [int(k) for k in key], int(pos), int(has_gauss), float(cached))


def restore_rng(rng: dict) -> dict:
    """Restore the global generators from ``capture_rng``'s dict; returns the sampler's state."""
    torch.set_rng_state(rng["torch"])
    name, key, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = rng["python"]
    # weights_only loading hands lists back where pickling saw tuples; random wants tuples.
    random.setstate((version, tuple(internal), gauss))
    return rng["sampler"]


def atomic_save(payload: dict, path: Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def training_state(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    sampler_state: dict,
    config: dict,
    history: list[dict],
    best: dict,
    preprocess: PreprocessSpec,
) -> dict:
    """The checkpoint payload (see the module docstring) after ``step`` optimizer steps.

    Tensors are CPU copies whatever the training device, so a GPU run's checkpoint loads (and
    exports) on a machine without one.
    """
    return {
        "state_dict": _on_cpu(model.state_dict()),
        "optimizer": _on_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "step": int(step),
        "rng": capture_rng(sampler_state),
        "config": config,
        "history": history,
        "best": best,
        # The model contract's preprocessing record: export copies it into the manifest.
        PREPROCESS_RECORD_KEY: preprocess.model_dump(mode="json"),
    }


def _on_cpu(value):
    """``value`` with every tensor inside its dicts, lists and tuples moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        moved = type(value)((key, _on_cpu(item)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # a module state_dict's per-layer versions, kept for loading
            moved._metadata = value._metadata
        return moved
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(item) for item in value)
    return value


def resolve_checkpoint_path(path_or_dir: str | Path) -> Path:
    """A checkpoint file, or a run folder meaning its ``last.pt``."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / LAST_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume at {path}")
    return path


def load_training_state(path_or_dir: str | Path) -> dict:
    """Load a training checkpoint for ``--resume`` (safe loader: no pickled code runs)."""
    path = resolve_checkpoint_path(path_or_dir)
    return load_training_state_file(path, required=("state_dict", "optimizer", "scheduler", "step", "rng", "config"))


def load_training_state_file(path: str | Path, *, required: tuple[str, ...]) -> dict:
    """Load a resumable checkpoint (safe loader) that must hold the ``required`` entries.

    Raises ``CheckpointError`` for a missing, unreadable or incomplete file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"cannot load training checkpoint {path}: {exc}") from None
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a resumable checkpoint of this kind (missing {', '.join(missing)})")
    log.info("resuming from %s at step %d", path, state["step"])
    return state
