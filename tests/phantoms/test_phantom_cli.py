"""``swinxseg phantom``: the files it writes."""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np

from phantoms import cli as phantom_cli
from phantoms.generator import make_phantom


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    phantom_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_writes_ct_and_labels_with_the_phantom_geometry(tmp_path, capsys):
    out, lab = tmp_path / "ph.nii.gz", tmp_path / "ph_labels.nii.gz"
    args = parse([str(out), "--labels", str(lab), "--seed", "4", "--shape", "40", "36", "24",
                  "--spacing", "6", "6", "6.5", "--orientation", "LPS", "--oblique-deg", "5"])
    assert phantom_cli.run(args) == 0
    assert "ph.nii.gz" in capsys.readouterr().out
    ct_ref, lab_ref = make_phantom(seed=4, shape=(40, 36, 24), spacing=(6, 6, 6.5), orientation="LPS", oblique_deg=5)
    for path, ref, dtype in ((out, ct_ref, np.int16), (lab, lab_ref, np.uint8)):
        img = nib.load(str(path))
        assert img.get_data_dtype() == dtype
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.get_sform(), ref.affine, atol=1e-4)
        np.testing.assert_allclose(img.get_qform(), ref.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(img.dataobj), ref.array)


def test_defaults():
    args = parse(["a.nii.gz", "--labels", "b.nii.gz"])
    assert args.seed == 0 and args.shape is None and args.orientation == "RAS" and args.oblique_deg == 0.0
