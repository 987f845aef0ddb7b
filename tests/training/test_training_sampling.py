"""Patch sampling: per-label positive centres, no silent left-right flips, reproducible draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.sampling import AugmentConfig, PatchSampler, label_centres


def _volume(shape=(64, 48, 40)):
    """A big label 1 block, a 3^3 label 7 cube at +x, a label 2 block at +x and 13 at -x."""
    labels = torch.zeros(shape, dtype=torch.uint8)
    labels[5:45, 5:40, 5:35] = 1
    labels[50:53, 10:13, 10:13] = 7
    labels[52:62, 30:40, 20:30] = 2
    labels[0:4, 30:40, 20:30] = 13
    image = labels.float() / 20.0
    return image, labels


def _centre_label_counts(draws: int, **sampler_options) -> dict[int, int]:
    """Positive-only 8^3 patches from ``_volume``: how often each label sits at the patch centre."""
    image, labels = _volume()
    sampler = PatchSampler(
        [image],
        [labels],
        patch_size=8,
        positive=1,
        negative=0,
        seed=0,
        augment=AugmentConfig(intensity_prob=0.0),
        **sampler_options,
    )
    counts = {label: 0 for label in (1, 2, 7, 13)}
    for _ in range(draws):
        _, patch = sampler.next_batch(1)
        centre = int(patch[0, 0, 4, 4, 4])  # a positive patch's centre voxel is its label
        if centre in counts:
            counts[centre] += 1
    return counts


def test_every_present_label_is_drawn_about_equally_often():
    counts = _centre_label_counts(400)
    # Label 13 touches the border: its patches are shifted inside the volume, off its voxels.
    assert counts[7] > 70 and counts[1] < 150, counts
    assert counts[2] > 70


def test_label_weights_make_a_label_proportionally_more_frequent():
    draws = 450
    counts = _centre_label_counts(draws, label_weights={7: 6.0})  # 6 / (6 + 1 + 1 + 1) of the draws
    assert 0.58 * draws < counts[7] < 0.75 * draws, counts
    assert counts[2] < 0.2 * draws and counts[1] < 0.2 * draws, counts
    image, labels = _volume()
    with pytest.raises(ValueError, match="label weights must be > 0"):
        PatchSampler([image], [labels], patch_size=8, label_weights={7: 0.0})


def test_patches_have_the_requested_shape_even_for_small_cases():
    image, labels = _volume(shape=(20, 18, 16))
    sampler = PatchSampler([image], [labels], patch_size=32, seed=1)
    images, targets = sampler.next_batch(3)
    assert images.shape == (3, 1, 32, 32, 32) and images.dtype == torch.float32
    assert targets.shape == (3, 1, 32, 32, 32) and targets.dtype == torch.int64


def test_no_flips_by_default_keeps_right_on_the_right():
    image, labels = _volume()
    sampler = PatchSampler(
        [image], [labels], patch_size=(64, 48, 40), seed=2, augment=AugmentConfig(intensity_prob=0.0)
    )
    for _ in range(10):
        images, targets = sampler.next_batch(1)
        assert torch.equal(targets[0, 0].to(torch.uint8), labels)
        assert torch.equal(images[0, 0], image)


def test_left_right_flip_swaps_the_lateral_labels():
    image, labels = _volume()
    sampler = PatchSampler(
        [image],
        [labels],
        patch_size=(64, 48, 40),
        seed=3,
        augment=AugmentConfig(flip_axes=(0,), intensity_prob=0.0),
    )
    flipped_seen = False
    for _ in range(20):
        _, targets = sampler.next_batch(1)
        target = targets[0, 0]
        if not torch.equal(target.to(torch.uint8), labels):
            flipped_seen = True
            # Mirrored, the right kidney (2, at high x) lands at low x, the patient's left: it must
            # now be called the left kidney, and the mirrored left kidney the right one.
            assert target[2:12, 30:40, 20:30].unique().tolist() == [13]
            assert target[60:64, 30:40, 20:30].unique().tolist() == [2]
            assert target[11:14, 10:13, 10:13].unique().tolist() == [8]
    assert flipped_seen


def test_state_dict_reproduces_the_stream():
    image, labels = _volume()
    sampler = PatchSampler([image], [labels], patch_size=16, seed=4)
    sampler.next_batch(2)
    state = sampler.state_dict()
    expected = sampler.next_batch(2)
    again = PatchSampler([image], [labels], patch_size=16, seed=99)
    again.load_state_dict(state)
    got = again.next_batch(2)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_centre_tables_are_bounded_and_deterministic():
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[:20] = 1
    first = label_centres(labels, seed=5, max_per_label=100)
    assert first[1].size == 100 and np.array_equal(
        first[1], label_centres(labels, seed=5, max_per_label=100)[1]
    )
    assert np.all(labels.reshape(-1)[first[1]] == 1)


def test_bad_ratios_and_axes_are_refused():
    image, labels = _volume()
    with pytest.raises(ValueError, match="positive/negative"):
        PatchSampler([image], [labels], patch_size=8, positive=0, negative=0)
    with pytest.raises(ValueError, match="flip_axes"):
        AugmentConfig(flip_axes=(3,))


def _contrast_sampler(**augment):
    """One 16x16x16 case: background at 0.5, liver (1) and aorta (5) halves of a central block."""
    labels = torch.zeros((16, 16, 16), dtype=torch.uint8)
    labels[4:12, 4:8, 4:12] = 1
    labels[4:12, 8:12, 4:12] = 5
    image = torch.full((16, 16, 16), 0.5)
    return PatchSampler([image], [labels], patch_size=16, positive=1, negative=0, seed=3,
                        augment=AugmentConfig(intensity_prob=0.0, **augment)), labels


def test_organ_contrast_shifts_each_organ_by_its_own_enhancement_and_leaves_background():
    from training.sampling import ENHANCEMENT_HU

    sampler, labels = _contrast_sampler(organ_contrast_prob=1.0, hu_window_width=500.0)
    aorta_shifts, liver_shifts = [], []
    for _ in range(40):
        image, patch_labels = sampler.next_batch(1)
        image, patch_labels = image[0, 0], patch_labels[0, 0]
        assert torch.equal(patch_labels, labels.long())  # labels never change
        assert torch.all(image[labels == 0] == 0.5)
        for label, shifts in ((5, aorta_shifts), (1, liver_shifts)):
            values = image[labels == label]
            assert torch.all(values == values[0])  # one shift per organ
            shifts.append(float(values[0]) - 0.5)
    aorta, liver = np.array(aorta_shifts), np.array(liver_shifts)
    assert aorta.max() > 0.1 and aorta.min() < -0.02  # enhanced and de-enhanced phases both drawn
    assert np.all(np.abs(aorta) <= 1.3 * ENHANCEMENT_HU[5] / 500 + 1e-6)
    assert np.all(np.abs(liver) <= 1.3 * ENHANCEMENT_HU[1] / 500 + 1e-6)
    assert np.abs(aorta).mean() > 2 * np.abs(liver).mean()  # the aorta enhances far more
    assert np.all(np.sign(aorta) == np.sign(liver))  # one phase per patch


def test_slab_keeps_a_centred_z_slab_and_pads_the_rest_as_the_sliding_window_does():
    sampler, labels = _contrast_sampler(slab_prob=1.0, slab_min_voxels=4)
    thicknesses = set()
    for _ in range(30):
        image, patch_labels = sampler.next_batch(1)
        kept = torch.nonzero(image[0, 0].amax(dim=(0, 1)) > 0).flatten()
        if kept.numel() == 16:
            continue  # the whole patch was drawn (thickness = height)
        start, stop = int(kept[0]), int(kept[-1]) + 1
        thickness = stop - start
        assert thickness >= 4 and start == (16 - thickness) // 2
        assert torch.all(image[0, 0, :, :, :start] == 0) and torch.all(image[0, 0, :, :, stop:] == 0)
        assert torch.all(patch_labels[0, 0, :, :, :start] == 0) and torch.all(patch_labels[0, 0, :, :, stop:] == 0)
        assert torch.equal(patch_labels[0, 0, :, :, start:stop], labels[:, :, start:stop].long())
        thicknesses.add(thickness)
    assert len(thicknesses) >= 4


def test_augmentation_probabilities_outside_0_1_are_refused():
    with pytest.raises(ValueError, match="organ_contrast_prob"):
        AugmentConfig(organ_contrast_prob=1.5)
    with pytest.raises(ValueError, match="slab_prob"):
        AugmentConfig(slab_prob=-0.1)
