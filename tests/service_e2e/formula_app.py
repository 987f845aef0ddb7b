"""A real app around a formula predictor, for server subprocesses that need no model folder.

``uvicorn --factory --app-dir tests service_e2e.formula_app:create_formula_app`` serves it. The
whole engine runs (read, reorient, resample, crop, sliding window, stitch, restore, encode); only
the network is a threshold, so a case of a small volume takes milliseconds on the CPU. Settings
come from the ``SWINXSEG_*`` environment, as with ``swinxseg serve``.
"""

from __future__ import annotations

import torch
from fastapi import FastAPI

from service.api.app import create_app
from service.inference.predictors import FormulaPredictor, resolve_device
from service.labels import FLARE23_LABELS
from service.manifest import ArchitectureConfig, ModelManifest
from service.segmenter import Segmenter
from service.settings import Settings

# Small windows keep the sliding window cheap on 2 CPU cores.
ROI = [32, 32, 32]


def bright_logits(batch: torch.Tensor) -> torch.Tensor:
    """Two channels: label 1 where the windowed intensity is above 0.6 (50 HU in [-250, 250])."""
    bright = (batch > 0.6).float()
    return torch.cat([1 - bright, bright], dim=1)


def formula_manifest() -> ModelManifest:
    return ModelManifest(
        name="formula-threshold",
        preset="formula",
        architecture=ArchitectureConfig(out_channels=2),
        labels={0: FLARE23_LABELS[0], 1: FLARE23_LABELS[1]},
        roi_size=ROI,
        target_spacing_mm=[1.5, 1.5, 2.5],
        out_channels=2,
    )


def create_formula_app(settings: Settings | None = None) -> FastAPI:
    """The app; ``settings`` default to the environment's (how ``uvicorn --factory`` calls it).
    The device follows ``SWINXSEG_DEVICE`` (auto: CUDA when present), so on a GPU machine the
    GPU-memory series are measured for real."""
    settings = settings if settings is not None else Settings()
    device = resolve_device(settings.device)
    predictor = FormulaPredictor(bright_logits, out_channels=2, device=device, name="formula")
    segmenter = Segmenter.from_predictor(settings, predictor, formula_manifest())
    return create_app(settings, segmenter=segmenter)
