"""Fixtures for the phantom tests: phantoms are cached per session (each costs ~1 s on 2 cores)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from phantoms.generator import make_phantom
from service.volume import Volume


@pytest.fixture(scope="session")
def phantom() -> Callable[..., tuple[Volume, Volume]]:
    """``phantom(seed, **grid_kwargs) -> (ct, labels)``, built once per argument set."""
    cache: dict[tuple, tuple[Volume, Volume]] = {}

    def get(seed: int, **kwargs) -> tuple[Volume, Volume]:
        key = (seed, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = make_phantom(seed=seed, **kwargs)
        return cache[key]

    return get
