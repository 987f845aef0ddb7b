"""OpenVINO's compile cache: a second process start imports the compiled model instead of compiling.

The demo weights (tiny network) are compiled into a temp cache folder; the cache's folder rules
(default under the work base, off switch, unusable folders) are checked without OpenVINO.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.errors import SwinxsegError
from service.inference.openvino_backend import OpenVinoPredictor
from service.inference.openvino_cache import CACHE_FOLDER, cache_entries, openvino_cache_dir
from service.segmenter import Segmenter
from service.settings import DEFAULT_MODEL_DIR, Settings
from service.workdir import sweep_stale

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")

# One process start: the Segmenter as `swinxseg batch`/`serve` builds it; prints what it loaded.
_START = """
import json, sys, time
from pathlib import Path
from service.segmenter import Segmenter
from service.settings import Settings
started = time.perf_counter()
segmenter = Segmenter(Settings(work_dir=Path(sys.argv[1]), backend="openvino", device="cpu",
                               inference_precision="float32", warmup=False))
print(json.dumps({"from_cache": segmenter.predictor.from_cache, "seconds": time.perf_counter() - started}))
"""


@pytest.fixture(scope="module")
def demo_onnx() -> Path:
    pytest.importorskip("openvino", reason="openvino is in requirements.lock; this environment lacks it")
    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        pytest.skip(f"demo weights not found at {DEFAULT_MODEL_DIR}")
    return DEFAULT_MODEL_DIR / "model.onnx"


def _start_process(work_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _START, str(work_dir)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in cache_entries(folder)}


def test_second_process_start_imports_the_compiled_model(demo_onnx: Path, tmp_path: Path) -> None:
    cache = tmp_path / CACHE_FOLDER
    first = _start_process(tmp_path)
    assert first["from_cache"] is False
    entries = _snapshot(cache)
    assert len(entries) == 1 and next(iter(entries.values()))[0] > 1_000_000  # a compiled blob, not a stub
    second = _start_process(tmp_path)
    assert second["from_cache"] is True
    assert _snapshot(cache) == entries  # nothing written: no new entry, the blob untouched


def test_a_damaged_blob_is_recompiled_and_gives_the_same_logits(demo_onnx: Path, tmp_path: Path) -> None:
    window = torch.rand((1, 1, 96, 96, 96), generator=torch.Generator().manual_seed(5))
    fresh = OpenVinoPredictor(demo_onnx, device=CPU, out_channels=15, roi=(96, 96, 96), cache_dir=tmp_path)
    assert fresh.from_cache is False
    reference = fresh(window)
    (blob,) = cache_entries(tmp_path)
    blob.chmod(0o600)  # OpenVINO writes its blobs read-only
    blob.write_bytes(blob.read_bytes()[:4096])  # truncated, as by a full disk or a killed writer
    again = OpenVinoPredictor(demo_onnx, device=CPU, out_channels=15, roi=(96, 96, 96), cache_dir=tmp_path)
    assert again.from_cache is False
    assert torch.equal(again(window), reference)
    assert blob.stat().st_size > 1_000_000  # rewritten whole
    served = OpenVinoPredictor(demo_onnx, device=CPU, out_channels=15, roi=(96, 96, 96), cache_dir=tmp_path)
    assert served.from_cache is True and torch.equal(served(window), reference)


def test_without_a_cache_nothing_is_written(demo_onnx: Path, tmp_path: Path) -> None:
    settings = Settings(work_dir=tmp_path, backend="openvino", device="cpu", openvino_cache=False)
    segmenter = Segmenter(settings)
    assert segmenter.predictor.from_cache is None
    assert not (tmp_path / CACHE_FOLDER).exists()


def test_other_backends_never_create_the_cache_folder(demo_onnx: Path, tmp_path: Path) -> None:
    Segmenter(Settings(work_dir=tmp_path, backend="onnx", device="cpu"))
    assert not (tmp_path / CACHE_FOLDER).exists()


def test_cache_folder_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    default = openvino_cache_dir(Settings(work_dir=tmp_path / "base"))
    assert default == tmp_path / "base" / CACHE_FOLDER and default.is_dir()
    assert sweep_stale(tmp_path / "base") == [] and default.is_dir()  # outlives the process folders
    explicit = tmp_path / "elsewhere" / "ov"
    assert openvino_cache_dir(Settings(work_dir=tmp_path, openvino_cache_dir=explicit)) == explicit
    assert openvino_cache_dir(Settings(work_dir=tmp_path, openvino_cache=False)) is None
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SwinxsegError, match="SWINXSEG_OPENVINO_CACHE_DIR"):
        openvino_cache_dir(Settings(openvino_cache_dir=blocker / "ov"))
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / CACHE_FOLDER).write_text("a file where the default folder goes")
    with caplog.at_level(logging.WARNING, logger="service.inference.openvino_cache"):
        assert openvino_cache_dir(Settings(work_dir=tmp_path / "blocked")) is None
    assert "compile cache off" in caplog.text


def test_a_cache_folder_that_breaks_after_start_up_only_costs_the_cache(
    demo_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = tmp_path / "file"
    gone.write_text("the cache folder was replaced by a file")
    with caplog.at_level(logging.WARNING, logger="service.inference.openvino_backend"):
        predictor = OpenVinoPredictor(demo_onnx, device=CPU, out_channels=15, roi=(96, 96, 96), cache_dir=gone / "ov")
    assert predictor.from_cache is None
    assert "compiling without it" in caplog.text
