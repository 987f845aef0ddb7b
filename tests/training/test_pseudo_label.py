"""``swinxseg pseudo-label``: the demo model over two phantoms, labels on each image's own grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from service.cli import main

# A cut-down field of view (about 120 x 110 x 100 mm): the demo model runs on 1 thread in the test.
SMALL = {"LPS": (60, 55, 34), "PIR": (55, 34, 60)}


@pytest.mark.slow
def test_demo_model_labels_two_phantoms_on_their_own_grids(tmp_path):
    from phantoms.generator import make_phantom

    data = tmp_path / "data"
    data.mkdir()
    entries = []
    # Two grids the service must undo: an LPS series and a PIR one with thick slices.
    for seed, orientation, spacing in ((1000, "LPS", (2.0, 2.0, 3.0)), (1001, "PIR", (3.0, 2.0, 2.0))):
        ct, labels = make_phantom(seed=seed, spacing=spacing, orientation=orientation, shape=SMALL[orientation])
        partial = np.where(np.isin(labels.array, [1, 2, 13]), labels.array, 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(ct.array, ct.affine), str(data / f"p{seed}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(partial, labels.affine), str(data / f"p{seed}.nii.gz"))
        entries.append({"image": f"p{seed}_0000.nii.gz", "label": f"p{seed}.nii.gz", "annotated": [1, 2, 13]})
    datalist = data / "ds.json"
    datalist.write_text(json.dumps({"training": entries}))
    out = tmp_path / "pseudo"
    assert main(["pseudo-label", "--datalist", str(datalist), "--out", str(out), "--device", "cpu"]) == 0
    written = json.loads((out / "datalist.json").read_text())["training"]
    assert len(written) == 2
    for entry in written:
        image = nib.load(entry["image"])
        pseudo = nib.load(entry["pseudo_label"])
        assert pseudo.shape == image.shape
        np.testing.assert_allclose(pseudo.affine, image.affine, atol=1e-4)
        values = set(np.unique(np.asarray(pseudo.dataobj)).tolist())
        assert values <= set(range(15)) and len(values) > 3  # the demo model finds organs
        assert entry["annotated"] == [1, 2, 13]
    assert not (out / ".pseudo-label-inputs").exists()
    # The written datalist is what `swinxseg train --partial refine` reads.
    from training.data import read_datalist

    cases = read_datalist(out / "datalist.json")["training"]
    assert all(c.pseudo_label is not None and c.annotated == (1, 2, 13) for c in cases)


def test_a_datalist_without_partial_entries_needs_all(tmp_path, make_ct, write_nifti):
    ct, labels = make_ct()
    write_nifti(ct, tmp_path / "a_0000.nii.gz")
    write_nifti(labels, tmp_path / "a.nii.gz")
    datalist = tmp_path / "ds.json"
    datalist.write_text(json.dumps({"training": [{"image": "a_0000.nii.gz", "label": "a.nii.gz"}]}))
    assert main(["pseudo-label", "--datalist", str(datalist), "--out", str(tmp_path / "o")]) == 2
