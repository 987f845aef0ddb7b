"""Tiny helpers so the index-space operations read the same for numpy arrays and torch tensors.

The geometry functions act on the last three (spatial) axes of either kind of array; these
helpers hide the handful of places where numpy and torch spell an operation differently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def spatial_axis(array: ArrayLike, axis: int) -> int:
    """The absolute axis index of spatial axis ``axis`` (0..2) of an ``(..., X, Y, Z)`` array."""
    if array.ndim < 3:
        raise ValueError(f"expected an array with at least 3 (spatial) axes, got shape {tuple(array.shape)}")
    return array.ndim - 3 + axis


def spatial_shape(array: ArrayLike) -> tuple[int, int, int]:
    """The last three axis lengths as plain ints."""
    return tuple(int(s) for s in array.shape[-3:])  # type: ignore[return-value]


def take(array: ArrayLike, index: np.ndarray, axis: int) -> ArrayLike:
    """Gather ``index`` (1D int) along absolute ``axis``: ``np.take`` / ``Tensor.index_select``."""
    if isinstance(array, torch.Tensor):
        return array.index_select(axis, torch.as_tensor(index, dtype=torch.long, device=array.device))
    return np.take(array, index, axis=axis)


def flip(array: ArrayLike, axes: Sequence[int]) -> ArrayLike:
    """Reverse ``axes`` (absolute). numpy returns a view; torch has no negative strides, so copies."""
    if not axes:
        return array
    if isinstance(array, torch.Tensor):
        return torch.flip(array, dims=tuple(axes))
    return np.flip(array, axis=tuple(axes))


def permute(array: ArrayLike, order: Sequence[int]) -> ArrayLike:
    """Reorder axes (a view for both kinds)."""
    if list(order) == list(range(array.ndim)):
        return array
    if isinstance(array, torch.Tensor):
        return array.permute(*order)
    return np.transpose(array, order)


def zeros(shape: Sequence[int], like: ArrayLike) -> ArrayLike:
    """A zero array of ``shape`` with ``like``'s kind, dtype and device."""
    if isinstance(like, torch.Tensor):
        return torch.zeros(tuple(shape), dtype=like.dtype, device=like.device)
    return np.zeros(tuple(shape), dtype=like.dtype)
