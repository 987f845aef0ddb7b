"""The SMIT pre-training run (``swinxseg pretrain``): config, crops and views, loop, exact resume.

Everything random (crop positions, view augmentation, token masks) comes from one
``numpy.random.Generator`` whose state is in every checkpoint, so ``--resume`` continues with the
same crops, masks and losses as an uninterrupted run. ``last.pt`` holds the whole state;
``encoder.pt`` the teacher's encoder in Swin-X Seg's key names, plus the ``PreprocessSpec`` the
run used (``swinxseg train --init-from`` reads it; see ``training.smit``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from training.checkpointing import atomic_save
from training.data import PreprocessParams
from training.sampling import pad_to_at_least

log = logging.getLogger(__name__)

LAST_NAME = "last.pt"
LOG_NAME = "log.jsonl"


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pre-training run (saved in its checkpoints as ``config``).

    Sizes in model-grid voxels; ``mask_prob`` is the chance that one 16^3-voxel token is masked.
    """

    preset: str = "tiny"
    patch_size: int = 96
    batch_size: int = 2
    steps: int = 1000
    lr: float = 5e-4
    weight_decay: float = 0.04
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    mask_prob: float = 0.6
    ema: float = 0.996
    out_dim: int = 256
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    recon_weight: float = 1.0
    patch_weight: float = 1.0
    global_weight: float = 1.0
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.02
    precision: str = "fp32"
    seed: int = 0
    threads: int = 0
    log_interval: int = 10
    checkpoint_interval: int = 100
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from training.precision import PRECISIONS

        if self.patch_size % 32 or self.patch_size < 32:
            raise ValueError(f"patch_size must be a positive multiple of 32, got {self.patch_size}")
        for name in ("batch_size", "steps", "log_interval", "checkpoint_interval", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.mask_prob < 1.0 or not 0.0 <= self.ema < 1.0 or self.lr <= 0:
            raise ValueError(f"need 0 < mask_prob < 1, 0 <= ema < 1, lr > 0; got {self.mask_prob}, {self.ema}, {self.lr}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"need warmup_steps >= 0 and 0 <= min_lr_ratio <= 1, got {self.warmup_steps}, {self.min_lr_ratio}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["preprocess"] = self.preprocess.to_dict()
        return json.loads(json.dumps(values))

    @classmethod
    def from_dict(cls, data: dict) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("preprocess"), dict):
            values["preprocess"] = PreprocessParams.from_dict(values["preprocess"])
        return cls(**values)


class ViewSampler:
    """Random crops of the prepared images and their two augmented views, from one generator."""

    def __init__(self, images: Sequence[torch.Tensor], config: PretrainConfig) -> None:
        if not images:
            raise ValueError("need at least one image to pre-train on")
        self.patch = (config.patch_size,) * 3
        self.images = [pad_to_at_least(im.float(), self.patch) for im in images]
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def next_batch(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(two views ``(B, 1, P, P, P)`` float32, two token masks ``(B, P/16, P/16, P/16)`` bool)."""
        from training.smit import TOKEN_VOXELS, random_token_mask

        c = self.config
        crops = torch.stack([self._crop() for _ in range(c.batch_size)])[:, None]
        views = (self._augment(crops), self._augment(crops))
        grid = tuple(p // TOKEN_VOXELS for p in self.patch)
        masks = tuple(random_token_mask(self.rng, c.batch_size, grid, c.mask_prob) for _ in range(2))
        return views, masks

    def _crop(self) -> torch.Tensor:
        image = self.images[int(self.rng.integers(len(self.images)))]
        starts = [int(self.rng.integers(n - p + 1)) for n, p in zip(image.shape, self.patch, strict=True)]
        return image[tuple(slice(s, s + p) for s, p in zip(starts, self.patch, strict=True))]

    def _augment(self, crops: torch.Tensor) -> torch.Tensor:
        c = self.config
        b = crops.shape[0]
        scale = 1.0 + self.rng.uniform(-c.intensity_scale, c.intensity_scale, size=(b, 1, 1, 1, 1))
        shift = self.rng.uniform(-c.intensity_shift, c.intensity_shift, size=(b, 1, 1, 1, 1))
        noise = self.rng.normal(0.0, c.noise_std, size=crops.shape)
        return (crops * torch.from_numpy(scale).float() + torch.from_numpy(shift).float()
                + torch.from_numpy(noise).float()).contiguous()

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


class PretrainTrainer:
    """Owns one pre-training run: student, EMA teacher, losses, optimizer, schedule, views.

    Args:
        config: the run's ``PretrainConfig``.
        images: prepared images ``(X, Y, Z)`` on the model grid.
        out_dir: where ``last.pt``, ``encoder.pt`` and ``log.jsonl`` go.
        resume_state: a loaded ``last.pt`` to continue from.
        device: where the networks run; crops are drawn on the CPU.
    """

    def __init__(self, config: PretrainConfig, images: Sequence[torch.Tensor], out_dir, *,
                 resume_state: dict | None = None, device: str | torch.device = "cpu") -> None:
        from model_export.config import preset
        from training.loop import _seed_everything
        from training.smit import DistillationLoss, SmitLossWeights, SmitObjective, build_networks

        self.config, self.device, self.out_dir = config, torch.device(device), Path(out_dir)
        if config.threads:
            torch.set_num_threads(config.threads)
        _seed_everything(config.seed)
        student, teacher = build_networks(preset(config.preset), config.out_dim)
        self.student, self.teacher = student.to(self.device), teacher.to(self.device)
        c = config
        self.objective = SmitObjective(
            self.student, self.teacher,
            DistillationLoss(c.out_dim, c.teacher_temp, c.student_temp, c.center_momentum).to(self.device),
            DistillationLoss(c.out_dim, c.teacher_temp, c.student_temp, c.center_momentum).to(self.device),
            SmitLossWeights(c.recon_weight, c.patch_weight, c.global_weight),
        )
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.views = ViewSampler(images, config)
        self.step, self.history = 0, []
        if resume_state is not None:
            self._load(resume_state)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / LOG_NAME, "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in self.history)

    def _lr_lambda(self, step: int) -> float:
        from training.loop import lr_factor

        c = self.config
        return lr_factor(step, warmup_steps=c.warmup_steps, total_steps=c.steps, min_ratio=c.min_lr_ratio)

    def _load(self, state: dict) -> None:
        from training.checkpointing import restore_rng

        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.objective.patch_loss.load_state_dict(state["patch_loss"])
        self.objective.global_loss.load_state_dict(state["global_loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # A resume may raise --steps: the schedule follows this config, not the checkpoint's.
        self.scheduler.base_lrs = [self.config.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.config.lr
            group["lr"] = self.config.lr * self._lr_lambda(self.scheduler.last_epoch)
        self.views.load_state_dict(restore_rng(state["rng"]))
        self.step, self.history = int(state["step"]), list(state.get("history", []))

    def train_step(self) -> dict:
        """One optimizer step and one EMA update; returns its record (losses as floats)."""
        from training.precision import autocast
        from training.smit import ema_update

        started = time.perf_counter()
        views, masks = self.views.next_batch()
        views = tuple(v.to(self.device) for v in views)
        masks = tuple(m.to(self.device) for m in masks)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.config.precision, self.device.type):
            losses = self.objective(views, masks)
        if not torch.isfinite(losses["total"]):
            raise FloatingPointError(f"pre-training loss is {losses['total'].item()} at step {self.step + 1}; lower --lr")
        losses["total"].backward()
        self.optimizer.step()
        self.scheduler.step()
        ema_update(self.teacher, self.student, self.config.ema)
        self.step += 1
        record = {"step": self.step, **{k: round(float(v.detach()), 6) for k, v in losses.items()}, "lr": lr,
                  "seconds": round(time.perf_counter() - started, 4)}
        self.history.append(record)
        with open(self.out_dir / LOG_NAME, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    def run(self, *, should_stop: Callable[[], bool] | None = None) -> dict:
        """Train to ``config.steps`` (saving ``last.pt`` and ``encoder.pt`` on the way); the last record."""
        c = self.config
        record: dict = {}
        log.info("pre-training from step %d to %d (patch %d, batch %d, %s on %s)",
                 self.step, c.steps, c.patch_size, c.batch_size, c.precision, self.device)
        while self.step < c.steps:
            record = self.train_step()
            if self.step % c.log_interval == 0:
                log.info("step %d/%d total %.4f (recon %.4f, patch %.4f, global %.4f) lr %.2e; teacher entropy "
                         "%.2f per image, %.2f over the batch (of log K: 1 per image = uniform collapse, ~0 over "
                         "the batch = one-prototype collapse)", self.step, c.steps, record["total"], record["recon"],
                         record["patch"], record["global"], record["lr"], record["teacher_sample_entropy"],
                         record["teacher_batch_entropy"])
                _warn_if_collapsed(record)
            stop = should_stop is not None and should_stop()
            if self.step % c.checkpoint_interval == 0 or self.step == c.steps or stop:
                self.save()
            if stop:
                log.warning("stopping at step %d of %d (resume with --resume %s)", self.step, c.steps, self.out_dir)
                break
        return record

    def save(self) -> None:
        """``last.pt`` (everything resumption needs) and ``encoder.pt`` (the teacher's encoder)."""
        from model_export.checkpoint import PREPROCESS_RECORD_KEY
        from training.checkpointing import _on_cpu, capture_rng
        from training.smit import ENCODER_NAME, encoder_state

        state = {
            "student": _on_cpu(self.student.state_dict()),
            "teacher": _on_cpu(self.teacher.state_dict()),
            "patch_loss": _on_cpu(self.objective.patch_loss.state_dict()),
            "global_loss": _on_cpu(self.objective.global_loss.state_dict()),
            "optimizer": _on_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "rng": capture_rng(self.views.state_dict()),
            "config": self.config.to_dict(),
            "history": self.history,
        }
        atomic_save(state, self.out_dir / LAST_NAME)
        encoder = {
            "state_dict": encoder_state(self.teacher),
            PREPROCESS_RECORD_KEY: self.config.preprocess.spec.model_dump(mode="json"),
            "pretrain": {"step": self.step, "preset": self.config.preset, "method": "SMIT"},
        }
        atomic_save(encoder, self.out_dir / ENCODER_NAME)
        log.info("saved %s and %s (step %d)", LAST_NAME, ENCODER_NAME, self.step)


COLLAPSED_ENTROPY = 0.98  # of log K: the teacher's targets are (almost) uniform


def _warn_if_collapsed(record: dict) -> None:
    """Say so when self-distillation has collapsed (``training.smit.collapse_measures``): the
    distillation losses then fall to ~0 and teach nothing, whatever the total loss shows."""
    if record["teacher_sample_entropy"] >= COLLAPSED_ENTROPY:
        log.warning("step %d: the teacher's global targets are uniform (entropy %.3f of log K): self-distillation "
                    "has collapsed and its losses teach nothing; only the masked-image reconstruction trains the "
                    "encoder (try a longer warm-up, a lower --lr or a larger batch)", record["step"],
                    record["teacher_sample_entropy"])
    elif record["teacher_batch_entropy"] <= 1.0 - COLLAPSED_ENTROPY:
        log.warning("step %d: every image gets the same teacher target (batch entropy %.3f of log K): "
                    "self-distillation has collapsed to one prototype", record["step"], record["teacher_batch_entropy"])


def prepare_images(sources: Sequence, params: PreprocessParams) -> list[torch.Tensor]:
    """Each source's CT through the service's ``preprocess``: ``(X, Y, Z)`` float32 on the model grid.

    ``sources`` have ``name`` and ``load_image() -> Volume`` (``ImageSource``) or ``load() -> (ct, labels)``.
    """
    from service.geometry import preprocess

    images = []
    for source in sources:
        started = time.perf_counter()
        ct = source.load_image() if hasattr(source, "load_image") else source.load()[0]
        prepared = preprocess(ct, params.spec, body_margin_mm=params.body_margin_mm, crop_to=params.crop_to,
                              device="cpu")
        images.append(prepared.image.contiguous())
        log.info("image %s: model grid %s (%.1f s)", source.name, tuple(prepared.image.shape),
                 time.perf_counter() - started)
    return images


@dataclass(frozen=True)
class ImageSource:
    """A CT on disk without labels (any format ``read_volume`` reads)."""

    name: str
    image: Path

    def load_image(self):
        from service.io.readers import read_volume

        return read_volume(self.image)
