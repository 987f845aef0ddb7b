"""Fine-tuning Swin-X Seg (``swinxseg train``): data, patch sampling, the loop, checkpoints, Dice.

- ``data``: datalist / folder-pair / phantom sources, the service's ``preprocess`` for images and
  ``labels_to_model_grid`` for labels, an in-memory (and optional disk) cache of prepared cases.
- ``sampling``: positive/negative patches with per-label positive centres; augmentation.
- ``loop``: ``TrainConfig``, ``Trainer``, ``train`` (Dice + CE, AdamW, warm-up + cosine).
- ``checkpointing``: published-format checkpoints written atomically; exact ``--resume``.
- ``evaluate``: per-label Dice on the model grid and through the service's ``Segmenter``.
- ``make_demo_weights``: export a checkpoint as ``weights/demo`` with its model card.
"""

from service.evaluation import dice_per_label
from training.data import (
    FileCase,
    PhantomCase,
    PreparedCase,
    PreprocessParams,
    labels_to_model_grid,
    load_cases,
    pair_folders,
    phantom_cases,
    read_datalist,
)
from training.evaluate import evaluate_cases, evaluate_segmenter
from training.loop import TrainConfig, Trainer, TrainResult, lr_factor, train

__all__ = [
    "FileCase",
    "PhantomCase",
    "PreparedCase",
    "PreprocessParams",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "dice_per_label",
    "evaluate_cases",
    "evaluate_segmenter",
    "labels_to_model_grid",
    "load_cases",
    "lr_factor",
    "pair_folders",
    "phantom_cases",
    "read_datalist",
    "train",
]
