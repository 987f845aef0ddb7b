"""Fixtures for the model_export tests: reference files beside the checkout and one tiny export."""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# ../shared beside the checkout (read-only reference data); tests that need it skip without it.
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REFERENCE = SHARED / "reference"
GOLDEN = REFERENCE / "swinxseg_small_golden.pt"
FULL_MANIFEST = REFERENCE / "swinxseg_full_state_dict_manifest.json"


@pytest.fixture(scope="session")
def golden() -> dict:
    if not GOLDEN.is_file():
        pytest.skip(f"golden reference {GOLDEN} not present")
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="session")
def full_manifest_path() -> Path:
    if not FULL_MANIFEST.is_file():
        pytest.skip(f"state_dict manifest {FULL_MANIFEST} not present")
    return FULL_MANIFEST


@dataclass
class TinyExport:
    out_dir: Path
    stdout: str  # what `swinxseg export` printed: the parity table

    def parity(self, backend: str) -> float:
        """The max |diff| vs eager that the table reports for ``backend``."""
        for line in self.stdout.splitlines():
            parts = line.split()
            if parts and parts[0] == backend:
                return float(parts[1])
        raise AssertionError(f"no {backend} row in:\n{self.stdout}")


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> TinyExport:
    """One `export --random-init --preset tiny` through the CLI module, shared by the export tests."""
    from model_export import export_cli

    out_dir = tmp_path_factory.mktemp("export") / "tiny"
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    args = parser.parse_args(["--random-init", "--seed", "7", "--preset", "tiny", "--out", str(out_dir)])
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert export_cli.run(args) == 0
    return TinyExport(out_dir, stdout.getvalue())
