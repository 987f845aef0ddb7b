"""The fine-tuning loop: Dice + cross-entropy, AdamW, linear warm-up then cosine, exact resumption.

The recipe is the paper's fine-tuning recipe (Dice + CE, AdamW lr 2e-4, weight decay 1e-5,
warm-up then cosine, patches with positive/negative sampling) scaled to the patch size, batch
and step budget given. The run is a pure function of its config, its data and its seed: a
checkpoint holds every piece of state that step ``n + 1`` depends on, so ``--resume`` continues
with the same patches, the same learning rates and the same losses as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from service.evaluation import mean_dice
from service.manifest import ArchitectureConfig
from training.checkpointing import (
    BEST_NAME,
    LAST_NAME,
    atomic_save,
    restore_rng,
    training_state,
)
from training.data import PreparedCase, PreprocessParams
from training.evaluate import evaluate_cases
from training.partial import PARTIAL_MODES, apply_partial_mode, class_mask, mask_logits
from training.precision import PRECISIONS, autocast, guard_bf16_convolutions
from training.sampling import AugmentConfig, PatchSampler

log = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"
# Classes incl. background unless --out-channels says otherwise: the architecture schema's default.
_DEFAULT_CLASSES = ArchitectureConfig.model_fields["out_channels"].default
DICE_MODES = ("batch", "sample")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (saved in every checkpoint as ``config``).

    Sizes in voxels of the model grid (1 mm by default); ``steps`` counts optimizer steps.
    ``data`` describes the data source so ``--resume DIR`` alone can rebuild it.
    """

    preset: str = "tiny"
    out_channels: int = _DEFAULT_CLASSES
    patch_size: int = 96
    batch_size: int = 2
    steps: int = 1000
    lr: float = 2e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    positive: int = 2
    negative: int = 1
    label_weights: dict[int, float] = field(default_factory=dict)
    class_weights: dict[int, float] = field(default_factory=dict)
    flip_axes: tuple[int, ...] = ()
    intensity_prob: float = 0.5
    organ_contrast_prob: float = 0.0
    slab_prob: float = 0.0
    dice: str = "batch"
    precision: str = "fp32"
    val_interval: int = 250
    val_overlap: float = 0.25
    checkpoint_interval: int = 100
    log_interval: int = 10
    seed: int = 0
    threads: int = 0
    init: str | None = None
    init_from: str | None = None
    partial: str = "none"
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.patch_size % 32:
            raise ValueError(
                f"patch_size must be a multiple of 32 (Swin-X Seg downsamples by 32), got {self.patch_size}"
            )
        for name in ("batch_size", "steps", "val_interval", "checkpoint_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0 or self.lr <= 0:
            raise ValueError(
                f"need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got {self.lr}, "
                f"{self.warmup_steps}, {self.min_lr_ratio}"
            )
        if self.dice not in DICE_MODES:
            raise ValueError(f"dice must be one of {', '.join(DICE_MODES)}, got {self.dice!r}")
        if self.partial not in PARTIAL_MODES:
            raise ValueError(f"partial must be one of {', '.join(PARTIAL_MODES)}, got {self.partial!r}")
        if self.partial == "mask" and 0 in self.flip_axes:
            # A left-right flip swaps labels 2/13 and 7/8, and with them which classes a case annotates.
            raise ValueError("--partial mask cannot be combined with flips of axis 0 (left-right)")
        if self.init and self.init_from:
            raise ValueError("give --init (whole network) or --init-from (encoder), not both")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        object.__setattr__(self, "flip_axes", tuple(int(a) for a in self.flip_axes))
        # The model's ROI (sliding window at validation and in service) is the training patch.
        roi = (self.patch_size,) * 3
        if self.preprocess.spec.roi_size != roi:
            spec = self.preprocess.spec.replace(roi_size=roi)
            object.__setattr__(self, "preprocess", replace(self.preprocess, spec=spec))
        for name in ("label_weights", "class_weights"):
            # JSON (the checkpoint's config) turns the label keys into strings.
            weights = {int(label): float(w) for label, w in getattr(self, name).items()}
            if any(w <= 0 for w in weights.values()):
                raise ValueError(f"{name.replace('_', ' ')} must be > 0, got {weights}")
            if any(not 0 <= label < self.out_channels for label in weights):
                raise ValueError(f"{name.replace('_', ' ')}: labels must be in 0..{self.out_channels - 1}")
            object.__setattr__(self, name, weights)

    def to_dict(self) -> dict:
        """Plain JSON-able types (tuples become lists), as stored in checkpoints."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["preprocess"] = self.preprocess.to_dict()
        return json.loads(json.dumps(values))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("preprocess"), dict):
            values["preprocess"] = PreprocessParams.from_dict(values["preprocess"])
        return cls(**values)


@dataclass
class TrainResult:
    """What a run left behind: the step reached, its history, and where its checkpoints are."""

    step: int
    history: list[dict]
    last: Path
    best: Path | None
    best_mean_dice: float
    init_report: str | None = None  # --init-from: the encoder keys loaded and left


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier for the ``step``-th optimizer step (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then a
    half cosine from 1 down to ``min_ratio`` at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_model(config: TrainConfig, *, load_init: bool = True) -> torch.nn.Module:
    """The network (seeded by the caller), initialised from ``config.init`` weights if given.

    ``config.init`` is any checkpoint ``model_export.checkpoint.load_checkpoint`` reads (the
    published ``{"state_dict": ...}`` format, a bare state_dict, ``module.``-prefixed keys).
    """
    from model_export.config import preset
    from model_export.network import SwinXSeg

    model = SwinXSeg(preset(config.preset, out_channels=config.out_channels))
    if config.init and load_init:
        from model_export.checkpoint import load_checkpoint, load_into

        load_into(model, load_checkpoint(Path(config.init)))
        log.info("initialised from %s", config.init)
    if config.init_from and load_init:
        from training.smit import load_encoder

        report = load_encoder(model, config.init_from)
        log.info("%s", report.summary())
        model.init_report = report.summary()  # what `swinxseg train` prints
    return model


def _window_width(preprocess: PreprocessParams) -> float:
    """HU per unit of the network's input: the width of the HU window it is scaled from."""
    low, high = preprocess.spec.hu_window
    return float(high - low)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class _JsonlLog:
    """Append-only JSONL log of the run; on resume it is rewritten from the checkpoint's history,
    so lines written after the last checkpoint (and redone now) never appear twice."""

    def __init__(self, path: Path, history: Sequence[dict]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            for record in history:
                handle.write(json.dumps(record) + "\n")

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class Trainer:
    """Owns one run's model, optimizer, schedule, sampler and history.

    Args:
        config: the run's ``TrainConfig``.
        train_cases, val_cases: prepared cases (``data.load_cases``); validation may be empty,
            in which case ``best.pt`` is not written.
        out_dir: where ``last.pt``, ``best.pt`` and ``log.jsonl`` go.
        resume_state: a loaded training checkpoint to continue from.
        device: where the network trains (``cpu`` or a CUDA device); patches are sampled on the CPU.
            A run may move between devices on resume; checkpoints always hold CPU tensors.
    """

    def __init__(
        self,
        config: TrainConfig,
        train_cases: Sequence[PreparedCase],
        val_cases: Sequence[PreparedCase],
        out_dir: str | Path,
        *,
        resume_state: dict | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.out_dir = Path(out_dir)
        self.val_cases = list(val_cases)
        train_cases = apply_partial_mode(train_cases, config.partial)
        # Per case, the classes its loss may use: all but the ones a partial annotation leaves out.
        self.class_masks = torch.stack([class_mask(c.annotated, config.out_channels) for c in train_cases])
        if config.threads:
            torch.set_num_threads(config.threads)
        _seed_everything(config.seed)
        # A resumed run takes its weights from the checkpoint; the --init file may be gone by now.
        self.model = build_model(config, load_init=resume_state is None).to(self.device)
        self.model.train()
        # Convolutions whose bfloat16 gradients this device gets wrong train in float32 (see precision).
        self.float32_convolutions: list[str] = []
        if config.precision == "bf16":
            patch = (config.batch_size, self.model.config.in_channels) + (config.patch_size,) * 3
            self.float32_convolutions = guard_bf16_convolutions(self.model, patch)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.sampler = PatchSampler(
            [c.image for c in train_cases],
            [c.labels for c in train_cases],
            patch_size=config.patch_size,
            positive=config.positive,
            negative=config.negative,
            seed=config.seed,
            augment=AugmentConfig(
                flip_axes=config.flip_axes, intensity_prob=config.intensity_prob,
                organ_contrast_prob=config.organ_contrast_prob, slab_prob=config.slab_prob,
                hu_window_width=_window_width(config.preprocess),
            ),
            label_weights=config.label_weights,
        )
        self.loss_fn = dice_ce_loss(config.dice, config.class_weights, config.out_channels).to(self.device)
        self.step = 0
        self.history: list[dict] = []
        self.best = {"step": 0, "mean_dice": float("-inf")}
        if resume_state is not None:
            self._load(resume_state)
        self.log = _JsonlLog(self.out_dir / LOG_NAME, self.history)

    def _lr_lambda(self, step: int) -> float:
        c = self.config
        return lr_factor(step, warmup_steps=c.warmup_steps, total_steps=c.steps, min_ratio=c.min_lr_ratio)

    def _load(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_schedule_settings()
        self.sampler.load_state_dict(restore_rng(state["rng"]))
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.best = dict(state.get("best") or self.best)

    def _apply_schedule_settings(self) -> None:
        """Make the restored optimizer follow this run's config, not the checkpoint's.

        The optimizer and scheduler state dicts carry their own peak lr (``base_lrs``,
        ``initial_lr``), weight decay and the lr of the next step, computed on the old schedule.
        Left alone, a resume with a new ``--lr``, ``--weight-decay`` or ``--steps`` would record
        the new values in its config and silently train with the old ones.
        """
        c = self.config
        factor = self._lr_lambda(self.scheduler.last_epoch)
        self.scheduler.base_lrs = [c.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = c.lr
            group["weight_decay"] = c.weight_decay
            group["lr"] = c.lr * factor

    # ------------------------------------------------------------------ running
    def run(self, *, until: int | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Train to ``config.steps``, checkpointing on the way.

        ``until`` pauses earlier, at that step, without touching the schedule (which always runs
        to ``config.steps``); ``should_stop()`` is polled after every step. Both save ``last.pt``.
        """
        c = self.config
        end = c.steps if until is None else min(int(until), c.steps)
        recent: list[float] = []
        interval_start = time.perf_counter()
        log.info(
            "training from step %d to %d of %d (patch %d, batch %d, %s on %s)",
            self.step,
            end,
            c.steps,
            c.patch_size,
            c.batch_size,
            c.precision,
            self.device,
        )
        while self.step < end:
            record = self.train_step()
            recent.append(record["loss"])
            if self.step % c.log_interval == 0:
                elapsed = time.perf_counter() - interval_start
                log.info(
                    "step %d/%d loss %.4f lr %.2e %.2f s/step",
                    self.step,
                    c.steps,
                    float(np.mean(recent)),
                    record["lr"],
                    elapsed / len(recent),
                )
                recent, interval_start = [], time.perf_counter()
            finished = self.step == c.steps
            if self.val_cases and (self.step % c.val_interval == 0 or finished):
                self.validate()
            if self.step % c.checkpoint_interval == 0 or finished:
                self.save(self.out_dir / LAST_NAME)
            if not finished and (self.step == end or (should_stop is not None and should_stop())):
                log.warning("pausing at step %d of %d: saving %s", self.step, c.steps, LAST_NAME)
                self.save(self.out_dir / LAST_NAME)
                break
        best_path = self.out_dir / BEST_NAME
        return TrainResult(
            step=self.step,
            history=self.history,
            last=self.out_dir / LAST_NAME,
            best=best_path if best_path.is_file() else None,
            best_mean_dice=float(self.best["mean_dice"]),
            init_report=getattr(self.model, "init_report", None),
        )

    def train_step(self) -> dict:
        """One optimizer step on one sampled batch; returns (and logs) its record."""
        started = time.perf_counter()
        images, labels, cases = self.sampler.next_batch_with_cases(self.config.batch_size)
        images, labels = images.to(self.device), labels.to(self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        # bf16 autocast runs the network's matmuls and convolutions in bfloat16 (weights, optimizer
        # and loss stay float32): about half the step time on CPUs with AVX512-BF16 or AMX, and
        # on GPUs with bfloat16 tensor cores.
        with autocast(self.config.precision, self.device.type):
            logits = self.model(images)
        logits = logits.float()
        if self.config.partial == "mask":
            logits = mask_logits(logits, self.class_masks[cases])
        loss = self.loss_fn(logits, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at step {self.step + 1}; lower --lr or check the labels"
            )
        loss.backward()
        self._refuse_non_finite_gradients()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        record = {
            "step": self.step,
            "loss": float(loss.item()),
            "lr": lr,
            "seconds": round(time.perf_counter() - started, 4),
        }
        self._record(record)
        return record

    def _refuse_non_finite_gradients(self) -> None:
        """Stop before a NaN or inf gradient reaches the weights (and from there ``last.pt``)."""
        gradients = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(gradients)
        if not torch.isfinite(norm):
            raise FloatingPointError(
                f"gradient norm is {norm.item()} at step {self.step + 1}; the weights and "
                f"{LAST_NAME} are left as they were: resume, lower --lr or train with --precision fp32"
            )

    def validate(self) -> dict:
        """Whole-case sliding-window Dice per label on the validation cases; keeps ``best.pt``."""
        from service.labels import FLARE23_LABELS

        started = time.perf_counter()
        scores, _ = evaluate_cases(
            self.model,
            self.val_cases,
            roi=[self.config.patch_size] * 3,
            num_classes=self.config.out_channels,
            overlap=self.config.val_overlap,
        )
        mean = mean_dice(scores)
        named = {
            FLARE23_LABELS.get(k, f"label_{k}"): (None if math.isnan(v) else round(v, 4))
            for k, v in scores.items()
        }
        record = {
            "step": self.step,
            "val_mean_dice": None if math.isnan(mean) else round(mean, 4),
            "val_dice": named,
            "seconds": round(time.perf_counter() - started, 2),
        }
        self._record(record)
        log.info(
            "validation at step %d: mean Dice %.3f (%s) in %.0f s",
            self.step,
            mean,
            ", ".join(f"{k} {v:.2f}" for k, v in named.items() if v is not None),
            record["seconds"],
        )
        if not math.isnan(mean) and mean > self.best["mean_dice"]:
            self.best = {"step": self.step, "mean_dice": mean}
            self.save(self.out_dir / BEST_NAME)
        return record

    def _record(self, record: dict) -> None:
        self.history.append(record)
        self.log.write(record)

    def save(self, path: Path) -> Path:
        state = training_state(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=self.step,
            sampler_state=self.sampler.state_dict(),
            config=self.config.to_dict(),
            history=self.history,
            best=self.best,
            preprocess=self.config.preprocess.spec,
        )
        atomic_save(state, path)
        log.info("saved %s (step %d)", path, self.step)
        return path


def dice_ce_loss(
    dice: str = "batch", class_weights: dict[int, float] | None = None, out_channels: int = _DEFAULT_CLASSES
) -> torch.nn.Module:
    """Dice + cross-entropy (equal weights), softmax over the classes, integer labels one-hot encoded.

    ``batch`` (the default) pools each class's Dice over the whole batch with no numerator smoothing,
    as MONAI's DiceLoss documentation recommends for sparse classes. ``sample`` is MONAI's default
    (per patch, smoothing 1e-5 on both sides) and is kept so older runs resume unchanged. Why it
    matters here: a small organ is absent from most patches, and per-patch smoothed Dice scores an
    absent class ~1 unless its summed probability falls below ~1e-5, with a steep gradient on the
    way down. That drove the kidneys, spleen and small organs to zero probability everywhere in the
    first demo runs. Without numerator smoothing an absent class is a constant with zero gradient,
    so false positives are left to the cross-entropy term.

    ``class_weights`` (unlisted classes weigh 1) scale a class in both terms (MONAI's ``weight``):
    an organ of a few thousand voxels is ~0.3 % of a 96^3 patch's cross-entropy, and at a low
    predicted probability the softmax damps its Dice gradient too, so a small organ the network
    has not found yet can stay at zero for thousands of steps.
    """
    from monai.losses import DiceCELoss  # heavy import, only when training

    weight = None
    if class_weights:
        weight = torch.ones(out_channels)
        for label, w in class_weights.items():
            weight[int(label)] = float(w)
    if dice == "batch":
        return DiceCELoss(
            to_onehot_y=True, softmax=True, batch=True, smooth_nr=0.0, smooth_dr=1e-5, weight=weight
        )
    if dice == "sample":
        return DiceCELoss(to_onehot_y=True, softmax=True, weight=weight)
    raise ValueError(f"dice must be one of {', '.join(DICE_MODES)}, got {dice!r}")


def train(
    config: TrainConfig,
    train_cases: Sequence[PreparedCase],
    val_cases: Sequence[PreparedCase],
    out_dir: str | Path,
    *,
    resume_state: dict | None = None,
    until: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Run (or continue) a training run; see ``Trainer`` and ``Trainer.run``."""
    trainer = Trainer(config, train_cases, val_cases, out_dir, resume_state=resume_state, device=device)
    return trainer.run(until=until, should_stop=should_stop)
