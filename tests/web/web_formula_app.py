"""The served app for the browser tests: the whole engine with a three-class formula network.

``uvicorn --factory --app-dir tests web.web_formula_app:create_web_app``. Label 1 (liver) where
the windowed intensity is in (0.6, 0.8] (50-150 HU in the [-250, 250] window), label 3 (spleen)
above 0.8 (> 150 HU: contrast, bone), background elsewhere: two organs in the legend, and label 2
(right kidney) a class of the model that never wins, so "the labels present" differs from "the
model's labels".
32^3 windows keep a case of the small real CT at a second or two on 2 CPU cores.
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

ROI = [32, 32, 32]
# Seconds each forward pass sleeps (environment): a case long enough to watch its progress.
DELAY_ENV = "WEB_WINDOW_DELAY_S"


def banded_logits(batch: torch.Tensor) -> torch.Tensor:
    liver = ((batch > 0.6) & (batch <= 0.8)).float()
    bright = (batch > 0.8).float()
    delay = float(os.environ.get(DELAY_ENV, "0"))
    if delay:
        time.sleep(delay)
    return torch.cat([1 - liver - bright, liver, torch.zeros_like(liver), bright], dim=1)


def web_manifest() -> ModelManifest:
    return ModelManifest(
        name="formula-bands",
        preset="formula",
        architecture=ArchitectureConfig(out_channels=4),
        labels={i: FLARE23_LABELS[i] for i in range(4)},
        roi_size=ROI,
        target_spacing_mm=[1.5, 1.5, 2.5],
        out_channels=4,
    )


def create_web_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    predictor = FormulaPredictor(banded_logits, out_channels=4, device=resolve_device(settings.device), name="formula")
    return create_app(settings, segmenter=Segmenter.from_predictor(settings, predictor, web_manifest()))
