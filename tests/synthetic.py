"""Shared test helpers: synthetic volumes with known world-space structures, formula predictors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CT_DIR = SHARED / "data" / "ct"

# HU of the synthetic structures and where they land after the [-250, 250] -> [0, 1] window.
# The order matters: resampling blends neighbouring intensities, so the blend of two neighbours must
# not look like a third structure. Body (0.5) and B (0.75) only meet each other; A (1.0) is the
# compact sphere, so the thin rim its blend with the body leaves in B's band stays small.
HU_BODY, HU_A, HU_B, HU_AIR = 0.0, 250.0, 125.0, -1000.0


def rotation(deg_x: float, deg_y: float) -> np.ndarray:
    ax, ay = np.deg2rad(deg_x), np.deg2rad(deg_y)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return ry @ rx


def make_affine(shape, spacing, *, axcodes="RAS", oblique_deg=0.0) -> np.ndarray:
    """An affine whose voxel grid is centred on the world origin.

    ``axcodes`` says where each voxel axis points (e.g. "LPS": i towards Left, j Posterior, k Superior).
    """
    unit = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
    direction = np.array([unit[c] for c in axcodes], dtype=float).T  # columns = axis directions (RAS)
    if oblique_deg:
        direction = rotation(oblique_deg, oblique_deg * 0.7) @ direction
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    centre = (np.asarray(shape) - 1) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def world_coordinates(shape, affine) -> np.ndarray:
    """(3, I, J, K) RAS mm of every voxel centre."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    return xyz.reshape(3, *shape)


def phantom_in_world(shape, affine):
    """A body ellipsoid holding a sphere (label 1, patient's right) and a box (label 2, left).

    Returns (hu int16, truth uint8) defined purely by world position, whatever the voxel grid.
    """
    x, y, z = world_coordinates(shape, affine)
    body = (x / 110.0) ** 2 + (y / 80.0) ** 2 + (z / 200.0) ** 2 <= 1.0
    sphere = (x - 40.0) ** 2 + (y - 5.0) ** 2 + (z - 10.0) ** 2 <= 28.0**2
    box = (np.abs(x + 45.0) <= 22.0) & (np.abs(y + 15.0) <= 18.0) & (np.abs(z + 15.0) <= 30.0)
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    hu[body] = HU_BODY
    truth = np.zeros(shape, dtype=np.uint8)
    hu[sphere & body] = HU_A
    truth[sphere & body] = 1
    hu[box & body] = HU_B
    truth[box & body] = 2
    return hu.astype(np.int16), truth


def intensity_logits(x: torch.Tensor) -> torch.Tensor:
    """Formula predictor for the phantom above: (B,1,...) scaled intensity -> (B,3,...) logits.

    Scaled values: air 0, body 0.5, A 1.0, B 0.75. Class 0 wins near 0 and 0.5.
    """
    background = -torch.minimum((x - 0.5) ** 2, x**2)
    a = -((x - 1.0) ** 2)
    b = -((x - 0.75) ** 2)
    return torch.cat([background, a, b], dim=1) * 100.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
