"""Training patches: positive/negative centres, per-label positive sampling, and light augmentation.

Positive centres are drawn *per label*: first a label uniformly among the labels present in the
training set, then a case holding it, then one of its voxels. Drawing a foreground voxel
uniformly instead (MONAI ``RandCropByPosNegLabel``) would pick the liver most of the time and the
adrenal glands almost never, which is how an earlier run ended with small organs near Dice 0.
``label_weights`` makes some labels more likely than others (unlisted labels weigh 1): the way
to spend more of a run on the organs it still misses, e.g. the lateralised kidneys and adrenals.

Augmentation, and why there are no left-right flips by default: the service always reorients
to RAS before the network sees a volume, so the network never needs to recognise a mirrored
body; and a left-right flip without swapping the lateralised labels (right/left kidney 2/13,
right/left adrenal 7/8) would teach it that the right kidney may lie on the patient's left.
``flip_axes`` can still enable flips; flipping x (axis 0) then swaps those label pairs.

All randomness comes from one ``numpy.random.Generator`` whose state is part of the checkpoint,
so a resumed run draws exactly the patches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

# FLARE-23 labels that swap under a left-right mirror: (right kidney, left kidney), (right, left adrenal).
LATERAL_PAIRS: tuple[tuple[int, int], ...] = ((2, 13), (7, 8))
# Upper end of the enhancement (HU above the unenhanced organ) each FLARE-23 organ reaches in
# the contrast phases of abdominal CT: arterial aorta, cortical kidneys, portal-venous liver and
# spleen; after Bae, "Intravenous contrast medium administration and scan timing at CT:
# considerations and approaches", Radiology 256(1), 2010. Organs not listed (tumour) get 40 HU.
ENHANCEMENT_HU: dict[int, float] = {
    1: 60, 2: 150, 3: 80, 4: 70, 5: 250, 6: 150, 7: 40, 8: 40, 9: 0, 10: 30, 11: 40, 12: 40, 13: 150,
}
# Positive centres kept per (case, label): enough to cover an organ, bounded memory for large cases.
MAX_CENTRES_PER_LABEL = 8192


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation applied to each patch.

    ``flip_axes``: spatial axes (0=x/R-L, 1=y/A-P, 2=z/S-I) flipped with probability 1/2 each;
    flipping axis 0 swaps ``lateral_pairs``. ``intensity_prob``: chance of a random
    ``image * a + b`` with ``a`` in ``1 +- intensity_scale`` and ``b`` in ``+- intensity_shift``
    (on the [0, 1] windowed scale).

    ``organ_contrast_prob``: chance of a simulated contrast phase. One phase strength ``f`` in
    ``[-0.5, 1]`` per patch, and per organ a jitter in ``[0.7, 1.3]``; the voxels of organ ``k``
    are shifted by ``f * jitter * ENHANCEMENT_HU[k]`` HU (``hu_window_width`` HU per unit), so a
    non-contrast scan is seen enhanced and a contrast one less so. Organ labels only: the
    background keeps its intensities. Clipped to [0, 1] as the service's HU window clips.
    ``slab_prob``: chance of a partial field of view in z: only a slab of ``slab_min_voxels`` up to
    the patch height is kept, centred in the patch, the rest set to 0 (image) and background
    (labels), which is how the service's sliding window pads a scan shorter than its window.
    """

    flip_axes: tuple[int, ...] = ()
    lateral_pairs: tuple[tuple[int, int], ...] = LATERAL_PAIRS
    intensity_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    organ_contrast_prob: float = 0.0
    hu_window_width: float = 500.0
    slab_prob: float = 0.0
    slab_min_voxels: int = 24

    def __post_init__(self) -> None:
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError(f"flip_axes must be spatial axes 0..2, got {list(self.flip_axes)}")
        for name in ("intensity_prob", "organ_contrast_prob", "slab_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.slab_min_voxels < 1 or self.hu_window_width <= 0:
            raise ValueError("slab_min_voxels must be >= 1 and hu_window_width > 0")


def pad_to_at_least(array: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``array (X, Y, Z)`` at the end of each axis so every side is >= ``size``."""
    pads = [max(0, int(s) - int(n)) for n, s in zip(array.shape, size, strict=True)]
    if not any(pads):
        return array
    # F.pad lists pads from the last axis backwards: (z_lo, z_hi, y_lo, y_hi, x_lo, x_hi).
    return torch.nn.functional.pad(array, (0, pads[2], 0, pads[1], 0, pads[0]))


def label_centres(labels: np.ndarray, *, seed: int, max_per_label: int = MAX_CENTRES_PER_LABEL) -> dict:
    """Flat voxel indices of each present foreground label of ``labels (X, Y, Z)``.

    At most ``max_per_label`` indices are kept per label, chosen by a generator seeded with
    ``seed`` so the table (and hence the training run) is reproducible. Returns
    ``{label: int64 array}`` for labels >= 1 that occur.
    """
    flat = labels.reshape(-1)
    rng = np.random.default_rng(seed)
    present = [int(v) for v in np.unique(flat) if v != 0]
    centres = {}
    for label in present:
        index = np.flatnonzero(flat == label)
        if index.size > max_per_label:
            index = np.sort(rng.choice(index, size=max_per_label, replace=False))
        centres[label] = index.astype(np.int64)
    return centres


class PatchSampler:
    """Draws ``(image, label)`` patch batches from preprocessed cases.

    Args:
        images: per case a float tensor ``(X, Y, Z)`` on the model grid (any float dtype).
        labels: per case a uint8 tensor ``(X, Y, Z)`` on the same grid.
        patch_size: patch side(s) in voxels; cases smaller than a patch are zero-padded.
        positive, negative: the ratio of patches centred on a foreground voxel vs anywhere.
        seed: seeds the sampler's generator (and the per-label centre tables).
        augment: the augmentation to apply.
    """

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        *,
        patch_size: int | Sequence[int],
        positive: int = 2,
        negative: int = 1,
        seed: int = 0,
        augment: AugmentConfig | None = None,
        label_weights: dict[int, float] | None = None,
    ) -> None:
        if len(images) != len(labels) or not images:
            raise ValueError(
                f"need as many label volumes as images (>= 1), got {len(images)} and {len(labels)}"
            )
        if positive < 0 or negative < 0 or positive + negative == 0:
            raise ValueError(f"positive/negative must be >= 0 and not both 0, got {positive}/{negative}")
        self.patch = tuple(
            int(p) for p in (patch_size if isinstance(patch_size, Sequence) else [patch_size] * 3)
        )
        self.positive_prob = positive / (positive + negative)
        self.augment = augment or AugmentConfig()
        self.images = [pad_to_at_least(im, self.patch) for im in images]
        self.labels = [pad_to_at_least(lb, self.patch) for lb in labels]
        self.centres = [label_centres(lb.numpy(), seed=seed + i) for i, lb in enumerate(self.labels)]
        # label -> cases holding it, so each label is drawn equally often whatever its size.
        self.cases_with: dict[int, list[int]] = {}
        for case, table in enumerate(self.centres):
            for label in table:
                self.cases_with.setdefault(label, []).append(case)
        self.present_labels = sorted(self.cases_with)
        self.label_probs = self._label_probabilities(label_weights or {})
        self.swap_lut = self._swap_table(max(int(lb.max()) for lb in self.labels))
        # Per label value (the swap table's range), the HU its contrast phase may add.
        self.enhancement_hu = torch.tensor([0.0] + [float(ENHANCEMENT_HU.get(k, 40.0))
                                                    for k in range(1, len(self.swap_lut))])
        self.rng = np.random.default_rng(seed)
        log.info("patch sampler: %d cases, labels present %s", len(self.images), self.present_labels)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The generator state (plain Python types, loadable with ``weights_only=True``)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    # ------------------------------------------------------------------ drawing
    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` patches: images ``(B, 1, *patch)`` float32, labels ``(B, 1, *patch)`` int64."""
        images, labels, _ = self.next_batch_with_cases(batch_size)
        return images, labels

    def next_batch_with_cases(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``next_batch`` and, per patch, the index of the case it was cut from (same draws)."""
        images, labels, cases = [], [], []
        for _ in range(batch_size):
            case, image, label = self._one_patch()
            images.append(image)
            labels.append(label)
            cases.append(case)
        return torch.stack(images)[:, None].float(), torch.stack(labels)[:, None].long(), cases

    def _one_patch(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        if self.present_labels and self.rng.random() < self.positive_prob:
            case, centre = self._positive_centre()
        else:
            case = int(self.rng.integers(len(self.images)))
            centre = tuple(int(self.rng.integers(n)) for n in self.images[case].shape)
        image, label = self._crop(case, centre)
        return (case, *self._augment(image, label))

    def _label_probabilities(self, weights: dict[int, float]) -> np.ndarray | None:
        """Probability of each present label as a positive centre; None: uniform (no weights)."""
        if any(w <= 0 for w in weights.values()):
            raise ValueError(f"label weights must be > 0, got {weights}")
        if not weights:
            return None
        raw = np.array([float(weights.get(label, 1.0)) for label in self.present_labels])
        return raw / raw.sum()

    def _positive_centre(self) -> tuple[int, tuple[int, int, int]]:
        if self.label_probs is None:  # the uniform draw, kept so older runs resume draw for draw
            label = self.present_labels[int(self.rng.integers(len(self.present_labels)))]
        else:
            label = self.present_labels[int(self.rng.choice(len(self.present_labels), p=self.label_probs))]
        holders = self.cases_with[label]
        case = holders[int(self.rng.integers(len(holders)))]
        candidates = self.centres[case][label]
        flat = int(candidates[int(self.rng.integers(candidates.size))])
        return case, tuple(int(v) for v in np.unravel_index(flat, self.images[case].shape))

    def _crop(self, case: int, centre: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch around ``centre``, shifted inside the (padded) case where it would stick out."""
        shape = self.images[case].shape
        starts = [min(max(c - p // 2, 0), n - p) for c, p, n in zip(centre, self.patch, shape, strict=True)]
        window = tuple(slice(s, s + p) for s, p in zip(starts, self.patch, strict=True))
        return self.images[case][window], self.labels[case][window]

    def _augment(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.augment
        # Draw every random number in a fixed order whatever the outcome, so the stream of draws
        # (hence resumption) does not depend on earlier branches.
        flips = [axis for axis in config.flip_axes if self.rng.random() < 0.5]
        apply_intensity = self.rng.random() < config.intensity_prob
        scale = 1.0 + self.rng.uniform(-config.intensity_scale, config.intensity_scale)
        shift = self.rng.uniform(-config.intensity_shift, config.intensity_shift)
        # The newer augmentations draw only when enabled, so runs without them resume as before.
        contrast = self._contrast_draw() if config.organ_contrast_prob > 0 else None
        slab = self._slab_draw(image.shape[2]) if config.slab_prob > 0 else None
        image = image.float()
        if flips:
            image = torch.flip(image, flips)
            label = torch.flip(label, flips)
            if 0 in flips:
                label = self.swap_lut[label.long()].to(label.dtype)
        if contrast is not None:
            image = (image + contrast[label.long()]).clamp(0.0, 1.0)  # one shift per label value
        if apply_intensity:
            image = image * scale + shift
        if slab is not None:
            image, label = image.clone(), label.clone()
            for part in (slice(0, slab.start), slice(slab.stop, None)):
                image[:, :, part] = 0.0
                label[:, :, part] = 0
        return image.contiguous(), label.contiguous()

    def _contrast_draw(self) -> torch.Tensor | None:
        """Per label value, the intensity shift of a simulated contrast phase (None: not this patch)."""
        config = self.augment
        apply = self.rng.random() < config.organ_contrast_prob
        strength = self.rng.uniform(-0.5, 1.0)
        jitter = self.rng.uniform(0.7, 1.3, size=len(self.swap_lut))
        if not apply:
            return None
        return torch.from_numpy(strength * jitter).float() * self.enhancement_hu / config.hu_window_width

    def _slab_draw(self, height: int) -> slice | None:
        """The z slab kept of a patch ``height`` voxels tall, centred as the sliding window centres
        a short scan (None: the whole patch)."""
        config = self.augment
        apply = self.rng.random() < config.slab_prob
        low = min(config.slab_min_voxels, height)
        thickness = int(self.rng.integers(low, height + 1))
        if not apply or thickness >= height:
            return None
        offset = (height - thickness) // 2
        return slice(offset, offset + thickness)

    def _swap_table(self, max_label: int) -> torch.Tensor:
        top = max([max_label, *(max(pair) for pair in self.augment.lateral_pairs)])
        lut = torch.arange(top + 1)
        for right, left in self.augment.lateral_pairs:
            lut[right], lut[left] = left, right
        return lut
