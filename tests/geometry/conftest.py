"""Shared geometry fixtures: affines for the storage layouts a CT arrives in."""

from __future__ import annotations

import numpy as np
import pytest

ANISOTROPIC_SPACING = (0.7, 0.7, 5.0)
ORIENTATION_CASES = ("ras", "lps", "permuted_flipped", "oblique")


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = (a for a in range(3) if a != axis)
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def _direction(case: str) -> np.ndarray:
    """Columns: the world (RAS) direction of voxel axes i, j, k."""
    if case == "ras":
        return np.eye(3)
    if case == "lps":  # DICOM / ITK default storage
        return np.diag([-1.0, -1.0, 1.0])
    if case == "permuted_flipped":  # i runs S->I, j runs L->R, k runs A->P
        return np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    if case == "oblique":  # LPS tilted by 20 degrees about two axes
        return _rotation(0, 20.0) @ _rotation(2, 20.0) @ np.diag([-1.0, -1.0, 1.0])
    raise ValueError(case)


def build_affine(case: str, spacing=ANISOTROPIC_SPACING, origin=(12.5, -30.0, 40.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _direction(case) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture(params=ORIENTATION_CASES)
def orientation_case(request) -> str:
    return request.param


@pytest.fixture
def make_affine():
    """``make_affine(case, spacing=(0.7, 0.7, 5.0), origin=...) -> 4x4``."""
    return build_affine


@pytest.fixture
def world_coordinates():
    """``world_coordinates(affine, shape) -> (X, Y, Z, 3)`` RAS mm of every voxel centre."""

    def compute(affine: np.ndarray, shape) -> np.ndarray:
        index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
        return index @ affine[:3, :3].T + affine[:3, 3]

    return compute
