"""Self-supervised pre-training of Swin-X Seg's encoder (SMIT, after Jiang et al., MICCAI 2022).

One step, on a batch of CT crops from the model grid (the service's ``preprocess``, labels unused):

- two views of each crop, each with its own random intensity scale/shift and Gaussian noise. Both
  views keep the crop's geometry, so a token of one view and the same token of the other cover the
  same anatomy (spatial augmentation would need the token correspondence tracked; not done here);
- the student sees each view with random cubes of ``mask_block`` voxels (one stage-3 token each,
  8^3 patch-embedding tokens) masked with probability ``mask_prob``: their patch-embedding tokens
  are replaced by one learned mask token. The teacher sees the views unmasked;
- three losses, summed with weights ``recon_weight``, ``patch_weight``, ``global_weight``:
  masked image prediction (L1 between the view's intensities and a linear pixel-shuffle head on the
  student's stage-3 tokens, on the masked voxels only); masked patch token self-distillation
  (cross-entropy between the teacher's and the student's projected stage-3 tokens at the masked
  positions, same view); global image token self-distillation (the pooled bottleneck, projected,
  student of one view against teacher of the other);
- the teacher's projections are centred (a running mean, momentum ``center_momentum``) and
  sharpened (temperature ``teacher_temp`` < ``student_temp``), which keeps self-distillation from
  collapsing to one output (as in DINO/iBOT);
- AdamW on the student, linear warm-up then cosine (``training.loop.lr_factor``), then the teacher
  moves by the EMA rule ``teacher = ema * teacher + (1 - ema) * student``.

The student's encoder is ``model_export.network.swin.SwinEncoder`` under the attribute name
``transformer``, as in ``SwinXSeg``, so the encoder checkpoint's keys are Swin-X Seg's own keys
(``transformer.layers.0.blocks.0.attn.qkv.weight`` ...) and ``load_encoder`` loads them as they are.
The teacher's encoder is what ``encoder.pt`` holds (as DINO, its EMA weights are the better ones).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

ENCODER_PREFIX = "transformer."
ENCODER_NAME = "encoder.pt"
# Stage-3 tokens of Swin-X Seg cover 16^3 voxels (patch embedding 2, three mergings 2x each).
TOKEN_VOXELS = 16


class ProjectionHead(nn.Module):
    """DINO-style head: MLP to a small bottleneck, L2-normalised, then a linear map to ``out_dim``
    prototype scores. ``(..., in_dim) -> (..., out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, bottleneck: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.Linear(bottleneck, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


class SmitNetwork(nn.Module):
    """Swin-X Seg's encoder with a learned mask token and SMIT's three heads.

    ``forward(x (B, 1, X, Y, Z), token_mask (B, X/16, Y/16, Z/16) bool or None)`` returns
    ``(reconstruction (B, 1, X, Y, Z), patch scores (B, X/16, Y/16, Z/16, K), global scores (B, K))``;
    every side a multiple of 32.
    """

    def __init__(self, arch, out_dim: int) -> None:
        from model_export.network.swin import SwinEncoder

        super().__init__()
        self.transformer = SwinEncoder(arch)
        self.mask_token = nn.Parameter(torch.zeros(arch.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        stage3 = arch.stage_dim(3)
        self.patch_head = ProjectionHead(stage3, out_dim)
        self.global_head = ProjectionHead(arch.bottleneck_dim, out_dim)
        self.reconstruction = nn.Linear(stage3, TOKEN_VOXELS**3)

    def encode(self, x: Tensor, token_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """(stage-3 tokens ``(B, X/16, Y/16, Z/16, 8E)`` after ``norm3``, bottleneck ``(B, X/32, ..., 16E)``)."""
        encoder = self.transformer
        tokens = encoder.patch_embed(x)  # (B, X/2, Y/2, Z/2, E)
        if token_mask is not None:
            scale = TOKEN_VOXELS // encoder.patch_embed.patch
            fine = token_mask.repeat_interleave(scale, 1).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
            tokens = torch.where(fine[..., None], self.mask_token.to(tokens.dtype), tokens)
        _, tokens = encoder.layers[0](tokens)
        _, tokens = encoder.layers[1](tokens)
        _, tokens = encoder.layers[2](tokens)
        stage3, bottleneck = encoder.layers[3](tokens)
        return encoder.norm3(stage3), bottleneck

    def forward(self, x: Tensor, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        stage3, bottleneck = self.encode(x, token_mask)
        b, gx, gy, gz, _ = stage3.shape
        t = TOKEN_VOXELS
        # Pixel shuffle: each stage-3 token predicts its own 16^3 voxels.
        voxels = self.reconstruction(stage3).view(b, gx, gy, gz, t, t, t)
        image = voxels.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, 1, gx * t, gy * t, gz * t)
        return image, self.patch_head(stage3), self.global_head(bottleneck.mean(dim=(1, 2, 3)))


class DistillationLoss(nn.Module):
    """KL divergence from the centred, sharpened teacher to the student, with the running centre.

    ``forward(student (N, K), teacher (N, K))`` -> scalar; call ``update_center(teacher)`` after.
    """

    def __init__(self, out_dim: int, teacher_temp: float, student_temp: float, momentum: float) -> None:
        super().__init__()
        self.teacher_temp, self.student_temp, self.momentum = teacher_temp, student_temp, momentum
        self.register_buffer("center", torch.zeros(out_dim))

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        log_target = F.log_softmax((teacher.float() - self.center) / self.teacher_temp, dim=-1).detach()
        log_student = F.log_softmax(student.float() / self.student_temp, dim=-1)
        # KL(teacher || student): DINO's cross-entropy less the teacher's entropy, a constant for the
        # student, so the same gradient; but it reaches 0 when the student matches, whereas the
        # cross-entropy also tracks the teacher's entropy, which centring raises early in a run.
        return (log_target.exp() * (log_target - log_student)).sum(-1).mean()

    @torch.no_grad()
    def update_center(self, teacher: Tensor) -> None:
        batch_center = teacher.float().reshape(-1, teacher.shape[-1]).mean(0)
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)


@torch.no_grad()
def collapse_measures(teacher_logits: Tensor, center: Tensor, teacher_temp: float) -> dict[str, Tensor]:
    """The two ways self-distillation collapses, measured on the teacher's targets (after centring
    and sharpening), each as a fraction of log K (K outputs); after Caron et al., "Emerging
    Properties in Self-Supervised Vision Transformers" (DINO, ICCV 2021), Sec. 5.3:

    - ``sample_entropy``: mean entropy of one target. 1.0 is the uniform collapse (every target
      flat: the student learns nothing).
    - ``batch_entropy``: entropy of the batch's mean target. Near 0 is the one-prototype collapse
      (every image maps to the same peak).

    Healthy training keeps the first clearly below 1 and the second clearly above 0.
    ``teacher_logits``: ``(N, K)``.
    """
    probs = F.softmax((teacher_logits.float() - center) / teacher_temp, dim=-1)
    log_k = torch.log(torch.tensor(float(probs.shape[-1])))

    def entropy(p: Tensor) -> Tensor:
        return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)

    return {"sample_entropy": entropy(probs).mean() / log_k, "batch_entropy": entropy(probs.mean(0)) / log_k}


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


@dataclass(frozen=True)
class SmitLossWeights:
    recon: float = 1.0
    patch: float = 1.0
    global_: float = 1.0


@dataclass
class SmitObjective:
    """The three SMIT losses on one batch of two views (see the module docstring)."""

    student: SmitNetwork
    teacher: SmitNetwork
    patch_loss: DistillationLoss
    global_loss: DistillationLoss
    weights: SmitLossWeights = field(default_factory=SmitLossWeights)

    def __call__(self, views: tuple[Tensor, Tensor], masks: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """``views``: two ``(B, 1, X, Y, Z)``; ``masks``: two ``(B, X/16, Y/16, Z/16)`` bool.
        Returns ``{"total", "recon", "patch", "global"}`` scalars (``total`` carries the gradient) and
        the global teacher's collapse measures (``teacher_sample_entropy``, ``teacher_batch_entropy``:
        :func:`collapse_measures`)."""
        with torch.no_grad():
            teacher_out = [self.teacher(v)[1:] for v in views]
        student_out = [self.student(v, m) for v, m in zip(views, masks, strict=True)]
        recon = patch = glob = 0.0
        for i in range(2):
            image, patch_scores, global_scores = student_out[i]
            voxel_mask = _voxel_mask(masks[i])
            recon = recon + (image.float() - views[i]).abs()[voxel_mask].mean() / 2
            patch = patch + self.patch_loss(patch_scores[masks[i]], teacher_out[i][0][masks[i]]) / 2
            glob = glob + self.global_loss(global_scores, teacher_out[1 - i][1]) / 2
        global_targets = torch.cat([t[1] for t in teacher_out])
        collapse = collapse_measures(global_targets, self.global_loss.center, self.global_loss.teacher_temp)
        self.patch_loss.update_center(torch.cat([t[0][m] for t, m in zip(teacher_out, masks, strict=True)]))
        self.global_loss.update_center(global_targets)
        w = self.weights
        total = w.recon * recon + w.patch * patch + w.global_ * glob
        return {"total": total, "recon": recon.detach(), "patch": patch.detach(), "global": glob.detach(),
                "teacher_sample_entropy": collapse["sample_entropy"], "teacher_batch_entropy": collapse["batch_entropy"]}


def _voxel_mask(token_mask: Tensor) -> Tensor:
    """``(B, gx, gy, gz)`` token mask -> ``(B, 1, 16 gx, 16 gy, 16 gz)`` voxel mask."""
    t = TOKEN_VOXELS
    return token_mask.repeat_interleave(t, 1).repeat_interleave(t, 2).repeat_interleave(t, 3)[:, None]


def build_networks(arch, out_dim: int) -> tuple[SmitNetwork, SmitNetwork]:
    """(student, teacher): the teacher starts as a copy of the student and is never optimised."""
    student = SmitNetwork(arch, out_dim)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def random_token_mask(rng: np.random.Generator, batch: int, grid: tuple[int, int, int], prob: float) -> Tensor:
    """``(batch, *grid)`` bool: each token masked with probability ``prob``; at least one per sample
    (a sample with none would have no masked-image or patch loss)."""
    mask = rng.random((batch, *grid)) < prob
    for b in range(batch):
        if not mask[b].any():
            mask[b].flat[int(rng.integers(mask[b].size))] = True
    return torch.from_numpy(mask)


def encoder_state(network: SmitNetwork) -> dict[str, Tensor]:
    """The encoder's weights under Swin-X Seg's own key names (``transformer.*``), on the CPU."""
    return {ENCODER_PREFIX + k: v.detach().cpu().clone() for k, v in network.transformer.state_dict().items()}


@dataclass(frozen=True)
class EncoderLoad:
    """What ``load_encoder`` did: the model keys it loaded and those it left as they were."""

    source: str
    loaded: list[str]
    left: list[str]

    def summary(self) -> str:
        prefixes = sorted({k.split(".")[0] for k in self.left})
        return (
            f"--init-from {self.source}: loaded {len(self.loaded)} encoder key(s) "
            f"({len([k for k in self.loaded if k.startswith(ENCODER_PREFIX)])} under {ENCODER_PREFIX!r}); "
            f"left {len(self.left)} key(s) at their fresh values ({', '.join(prefixes) or 'none'})"
        )


def load_encoder(model: nn.Module, path) -> EncoderLoad:
    """Load an encoder checkpoint (``encoder.pt``, or any checkpoint's ``transformer.*`` keys) into
    Swin-X Seg ``model``; every other key keeps its value.

    Raises:
        CheckpointError: unreadable file, no encoder key, keys the model does not have, or shapes
        that differ (e.g. pre-trained with another ``--preset``).
    """
    from model_export.checkpoint import _describe, load_checkpoint
    from service.errors import CheckpointError

    state = {k: v for k, v in load_checkpoint(path).items() if k.startswith(ENCODER_PREFIX)}
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} (checkpoint {list(v.shape)}, model {list(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if not state or unexpected or wrong:
        problems = [p for p in (_describe(unexpected, "unexpected key"), _describe(wrong, "wrong-shape key")) if p]
        raise CheckpointError(
            f"{path} does not fit this Swin-X Seg's encoder: "
            + ("; ".join(problems) if problems else f"it holds no {ENCODER_PREFIX!r} keys")
        )
    model.load_state_dict(state, strict=False)
    missing = [k for k in expected if k.startswith(ENCODER_PREFIX) and k not in state]
    if missing:
        log.warning("--init-from %s: %d encoder key(s) not in the checkpoint: %s", path, len(missing), missing[:5])
    return EncoderLoad(str(path), sorted(state), [k for k in expected if k not in state])
