"""A real app around a formula predictor, for server subprocesses that need no model folder.

``uvicorn --factory --app-dir tests service_e2e.formula_app:create_formula_app`` serves it. The
whole engine runs (read, reorient, resample, crop, sliding window, stitch, restore, encode); only
the network is a threshold, so a case of a small volume takes milliseconds on the CPU. Settings
come from the ``SWINXSEG_*`` environment, as with ``swinxseg serve``.
"""

from __future__ import annotations

import os
import time

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


# Seconds each forward pass sleeps (environment): makes a case last long enough to be killed mid-way.
DELAY_ENV = "FORMULA_WINDOW_DELAY_S"


def slow_bright_logits(batch: torch.Tensor) -> torch.Tensor:
    time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    return bright_logits(batch)


def formula_segmenter(settings: Settings) -> Segmenter:
    device = resolve_device(settings.device)
    logits = slow_bright_logits if float(os.environ.get(DELAY_ENV, "0")) > 0 else bright_logits
    predictor = FormulaPredictor(logits, out_channels=2, device=device, name="formula")
    return Segmenter.from_predictor(settings, predictor, formula_manifest())


def create_formula_app(settings: Settings | None = None) -> FastAPI:
    """The app; ``settings`` default to the environment's (how ``uvicorn --factory`` calls it).
    The device follows ``SWINXSEG_DEVICE`` (auto: CUDA when present), so on a GPU machine the
    GPU-memory series are measured for real."""
    settings = settings if settings is not None else Settings()
    return create_app(settings, segmenter=formula_segmenter(settings))
