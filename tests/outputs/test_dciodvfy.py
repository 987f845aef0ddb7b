"""dciodvfy (David Clunie's dicom3tools, Debian package, installed by ``make dicom3tools``) finds
no Error in our RTSTRUCT and SEG."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from dicom_variants import organ_mask, write_variant

from service.io.readers import read_volume
from service.labels import FLARE23_LABELS
from service.outputs.dicom_common import ModelInfo
from service.outputs.selection import write_outputs

DCIODVFY = shutil.which("dciodvfy")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy missing: `make dicom3tools` installs Debian's dicom3tools")
def test_outputs_have_no_dciodvfy_error(tmp_path, real_slices):
    folder = write_variant(tmp_path / "ct", real_slices, "feet_first_supine")
    ct = read_volume(folder, max_voxels=10**8)
    mask = ct.with_array(organ_mask(ct.shape, ct.affine))
    model = ModelInfo(name="swinxseg-tiny-phantom-demo", manifest_sha256="ef" * 32, demo=True)
    paths = write_outputs(("rtstruct", "seg"), ct, mask, FLARE23_LABELS, model, stem=tmp_path / "case")
    for kind, path in paths.items():
        run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120, check=False)
        lines = (run.stdout + run.stderr).splitlines()
        assert lines and lines[0].strip() in ("RTStructureSet", "Segmentation"), lines[:3]
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"{kind}: {errors}"
