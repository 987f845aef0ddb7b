"""The benchmark's baseline and table code: the baseline writes a mask on the input's grid,
the runner's rows and cells say what the figures say. No timing assertions (a benchmark is a
script that prints a table, not a timed test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("monai", reason="the baseline is built from stock MONAI (the export extra)")

from bench.baseline import run_baseline  # noqa: E402
from bench.probes import emit_result, parse_result  # noqa: E402
from bench.run_bench import (  # noqa: E402
    BenchRow,
    build_row,
    format_dice_table,
    format_row,
    format_table,
    format_targets,
    table_header,
)
from service.labels import FLARE23_LABELS  # noqa: E402
from service.manifest import ArchitectureConfig, ArtifactInfo, ModelManifest, sha256_of  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHAPE = (40, 36, 14)


class _ThresholdNet(torch.nn.Module):
    """15 logits per voxel: label 1 where the scaled intensity is above 0.6, else background."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        organ = (x > 0.6).float()
        zeros = torch.zeros_like(x)
        return torch.cat([1.0 - organ, organ] + [zeros - 1.0] * 13, dim=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    torch.jit.script(_ThresholdNet()).save(str(folder / "model.ts"))
    ModelManifest(
        name="threshold", architecture=ArchitectureConfig(), labels=FLARE23_LABELS,
        artifacts={"torchscript": ArtifactInfo(file="model.ts", sha256=sha256_of(folder / "model.ts"),
                                               format="torchscript")},
    ).write(folder)
    return folder


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory) -> Path:
    """An LPS-stored, anisotropic CT: air around a soft-tissue box holding a bright block."""
    hu = np.full(SHAPE, -1000, dtype=np.int16)
    hu[5:35, 4:32, 2:12] = 0
    hu[12:22, 10:20, 4:9] = 200  # 0.9 after the -250..250 window: label 1 for _ThresholdNet
    affine = np.diag([-2.0, -2.5, 3.0, 1.0])  # i -> Left, j -> Posterior: Orientationd must flip
    affine[:3, 3] = (40.0, 30.0, -20.0)
    path = tmp_path_factory.mktemp("ct") / "tiny_ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return path


def test_baseline_writes_mask_on_input_grid(ct_path: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.nii.gz"
    result = run_baseline(ct_path, out, model_dir, "cpu")

    mask_image, ct_image = nib.load(str(out)), nib.load(str(ct_path))
    assert mask_image.shape == ct_image.shape
    np.testing.assert_allclose(mask_image.affine, ct_image.affine, atol=1e-5)
    assert mask_image.get_data_dtype() == np.uint8
    mask = np.asarray(mask_image.dataobj)
    # The bright block comes back as label 1 in the file's own (LPS) voxel order.
    assert mask[14:20, 12:18, 5:8].min() == 1
    assert mask[0:3].max() == 0
    assert result["windows"] >= 1 and result["input_shape"] == list(SHAPE)
    assert result["peak_rss_mb"] > 0 and result["seconds"] > 0
    assert result["torch_reserved_mb"] is None  # no GPU figures on the CPU


def test_baseline_cli_reports_json(ct_path: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_mask.nii.gz"
    done = subprocess.run(
        [sys.executable, "-m", "bench.baseline", str(ct_path), str(out), "--model", str(model_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = parse_result(done.stdout)
    assert result is not None and result["pipeline"] == "baseline"
    assert nib.load(str(out)).shape == SHAPE


def test_result_protocol_round_trip(capsys) -> None:
    emit_result({"seconds": 1.5, "shape": (1, 2, 3), "value": np.float32(2.0)})
    printed = "noise from a library\n" + capsys.readouterr().out
    assert parse_result(printed) == {"seconds": 1.5, "shape": [1, 2, 3], "value": 2.0}
    assert parse_result("a crash, no result\n") is None


def _row() -> BenchRow:
    return BenchRow(
        case="ct1.nii.gz", image_size="512x512x55", windows_ours_run=20, windows_ours_skipped=7,
        windows_base=45, seconds_base=80.0, seconds_ours=30.0, process_seconds_base=85.25,
        process_seconds_ours=33.0, cpu_seconds_base=150.0, cpu_seconds_ours=55.0, rss_base_mb=2800.4, rss_ours_mb=700.0,
        agreement_pct=99.8765, dice={1: 0.99, 2: 0.9812, 14: 1.0}, geometry_ok=True,
    )


def test_format_row_cpu() -> None:
    assert format_row(_row()) == (
        "| ct1.nii.gz | 512x512x55 | 20/7 | 45 | 80.0 | 30.0 | 0.38 | 85.2 | 33.0 | 150.0 | 55.0 | 2800 | 700 | 0.25 "
        "| 99.88 | 0.981 (2) | 0.990 | ok |"
    )


def test_format_row_gpu_and_missing_figures() -> None:
    row = BenchRow(case="x", image_size="?", gpu_base=(3464.0, 3000.4), gpu_ours=(None, 1200.0),
                   geometry_ok=False)
    cells = format_row(row, gpu=True).strip("| ").split(" | ")
    assert len(cells) == len(table_header(gpu=True))
    gpu_cells = [cells[table_header(gpu=True).index(name)] for name in ("GPU base", "GPU ours")]
    assert gpu_cells == ["3464/3000", "–/1200"]
    assert cells[2:7] == ["–", "–", "–", "–", "–"]
    assert cells[-1] == "MISMATCH"


def test_table_header_matches_rows() -> None:
    lines = format_table([_row(), _row()]).splitlines()
    assert len(lines) == 4
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_build_row_takes_median_seconds_and_max_memory() -> None:
    def base(seconds, rss):
        return {"seconds": seconds, "process_seconds": seconds + 1, "peak_rss_mb": rss, "windows": 9,
                "input_shape": [4, 5, 6]}

    def ours(seconds, rss):
        return {"seconds": seconds, "process_seconds": seconds + 1, "peak_rss_mb": rss, "windows_run": 3,
                "windows_skipped": 6}

    compare = {"agreement_pct": 99.9, "dice": {"1": 0.99}, "geometry_ok": True}
    runs = [{"base": base(s, r), "ours": ours(s / 4, r / 4), "compare": compare}
            for s, r in ((10.0, 100.0), (30.0, 300.0), (20.0, 200.0))]
    row = build_row(Path("/x/case.nii.gz"), runs)
    assert (row.seconds_base, row.seconds_ours, row.rss_base_mb, row.rss_ours_mb) == (20.0, 5.0, 300.0, 75.0)
    assert row.image_size == "4x5x6" and row.dice == {1: 0.99} and row.time_ratio == 0.25


def test_build_row_reports_a_failed_side() -> None:
    row = build_row(Path("c.nii"), [{"base": {"error": "bench.baseline timed out"},
                                     "ours": {"seconds": 1.0, "peak_rss_mb": 5.0, "input_shape": [1, 2, 3]},
                                     "compare": None}])
    assert row.seconds_base is None and row.time_ratio is None
    assert "timed out" in format_targets([row], device="cpu")


def test_dice_table_shows_voxel_counts() -> None:
    row = _row()
    row.voxels_base, row.voxels_ours = {1: 500, 2: 40, 14: 3}, {1: 510, 2: 41, 14: 3}
    line = format_dice_table([row]).splitlines()[-1]
    cells = line.strip("| ").split(" | ")
    assert cells[0] == "ct1.nii.gz"
    assert cells[1:4] == ["0.990 (500/510)", "0.981 (40/41)", ""]
    assert cells[14] == "1.000 (3/3)"
