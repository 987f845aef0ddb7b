"""A finished job's result files, the same in both job stores (embedded and queue mode).

``<job folder>/``: ``mask.nii.gz`` (always: the job's mask, its preview and its statistics come
from it), ``rtstruct.dcm`` and ``seg.dcm`` when asked for (``outputs``), ``preview.png`` when
wanted, ``image.nii.gz`` (the CT itself as int16 NIfTI on the mask's affine, for the web
page's viewer) when asked for (``image=true``). Every DICOM output is built in memory before any file is written, and each file goes
through a temp name and a rename, so a job never shows half an output: a writer's refusal (a
series the RTSTRUCT cannot reference) fails the job with nothing written.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.io.writers import mask_to_nifti_bytes, write_ct
from service.labels import FLARE23_LABELS
from service.outputs.dicom_common import ModelInfo, model_info, write_bytes_atomically
from service.outputs.selection import DICOM_OUTPUTS, output_bytes
from service.outputs.statistics import organ_statistics
from service.volume import Volume

if TYPE_CHECKING:
    from service.manifest import ModelManifest
    from service.metrics_types import CaseMetrics

MASK_NAME, PREVIEW_NAME = "mask.nii.gz", "preview.png"
IMAGE_NAME = "image.nii.gz"  # the input CT for the web page's viewer (image=true)
# The file of each output kind inside a job folder (the download name adds the case name).
OUTPUT_FILES = {"nifti": MASK_NAME, "rtstruct": "rtstruct.dcm", "seg": "seg.dcm"}


def labels_and_model(manifest: ModelManifest | None) -> tuple[dict[int, str], ModelInfo]:
    """The label table and model identification the outputs name (FLARE-23 without a manifest)."""
    if manifest is None:
        return dict(FLARE23_LABELS), ModelInfo(name="unknown model")
    return manifest.labels, model_info(manifest)


def write_job_results(
    folder: Path,
    ct: Volume,
    mask: Volume,
    *,
    outputs: Collection[str],
    manifest: ModelManifest | None,
    metrics: CaseMetrics,
    preview_title: str | None = None,
    want_preview: bool = False,
    want_image: bool = False,
) -> list[dict]:
    """Write the job's files (blocking) and return its organ statistics (one dict per label
    present: voxels, volume mL, HU, centroid and box in RAS+ mm; see
    :func:`service.outputs.statistics.organ_statistics`). Sets ``metrics.seconds["write"]``.

    Raises:
        DicomSeriesError, InvalidInputError: a DICOM output the input cannot carry (nothing is
        written then).
    """
    started = time.perf_counter()
    labels, model = labels_and_model(manifest)
    built = {kind: output_bytes(kind, ct, mask, labels, model) for kind in outputs if kind in DICOM_OUTPUTS}
    statistics = [organ.to_dict() for organ in organ_statistics(ct, mask, labels)]
    write_bytes_atomically(mask_to_nifti_bytes(mask), folder / MASK_NAME)
    for kind, data in built.items():
        write_bytes_atomically(data, folder / OUTPUT_FILES[kind])
    if want_image:
        write_viewer_image(ct, folder / IMAGE_NAME)
    metrics.seconds["write"] = round(time.perf_counter() - started, 4)
    if want_preview:
        from service.preview import render_preview  # matplotlib: only when a preview is wanted

        scratch = folder / f".{PREVIEW_NAME}.tmp.png"
        render_preview(ct, mask, scratch, title=preview_title)
        scratch.replace(folder / PREVIEW_NAME)
    return statistics


def write_viewer_image(ct: Volume, path: Path) -> None:
    """The CT as int16 NIfTI (HU, clipped to the int16 range: it is for display) on the CT's own
    affine, which is the mask's, so a viewer lays the mask over it voxel for voxel (atomic)."""
    voxels = np.asarray(ct.array)
    if voxels.dtype != np.int16:
        voxels = np.clip(np.rint(voxels), -32768, 32767).astype(np.int16)
    write_ct(ct.with_array(voxels), path)
