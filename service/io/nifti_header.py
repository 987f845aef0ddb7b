"""NIfTI qform and sform: which one places the volume, and carrying both onto the mask.

The rule (docs/SERVICE.md, "NIfTI qform and sform"): the volume is placed by the **sform when
sform_code > 0, else the qform when qform_code > 0, else pixdim alone** (orientation unknown).
This is nibabel's ``get_best_affine``, which MONAI's ``LoadImage`` (the reference pipeline's
loader) uses, so the network sees the patient as the reference pipeline did. ITK decides
differently (it prefers the qform in several cases, e.g. when the sform's scales differ from
pixdim), so when both codes are set and the two transforms place any corner of the volume
more than a tenth of a voxel apart, the case gets a ``qform_sform_disagree`` warning: one of
the two is wrong and the file does not say which.

Whatever the rule, the mask must open on the image in every viewer: :class:`NiftiGeometry`
keeps the input header's own geometry fields (codes, quaternion, offsets, sform rows, pixdim,
units) so the writer copies them verbatim (into NIfTI-1, which every reader reads), and each reader then applies its own rule to the same
numbers for the image and the mask.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from service.case_warnings import ORIENTATION_UNKNOWN, QFORM_SFORM_DISAGREE, CaseWarning

# The header fields that place a NIfTI image in the world (and its units); copied to the mask.
GEOMETRY_FIELDS = (
    "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units",
)
# qform and sform "agree" when no corner of the volume moves by more than this many voxels
# (of the smallest spacing) between them: below that no mask could look different.
_DISAGREE_VOXELS = 0.1


@dataclass(frozen=True, eq=False)
class NiftiGeometry:
    """The geometry fields of an input NIfTI header and the affine our rule derives from them."""

    version: int  # of the input: 1 or 2 (NIfTI-2 keeps these fields as float64)
    affine: np.ndarray  # RAS+ mm, the rule above
    fields: dict[str, np.ndarray] = field(default_factory=dict)

    def places(self, affine: np.ndarray) -> bool:
        """Whether ``affine`` is the one these fields give (a mask on the input's grid)."""
        return bool(np.allclose(affine, self.affine, rtol=0.0, atol=1e-6))

    def mask_header(self) -> nib.Nifti1Header:
        """A fresh NIfTI-1 header holding the input's geometry fields verbatim.

        Always NIfTI-1, even for a NIfTI-2 input: ITK (SimpleITK 2.5) cannot read NIfTI-2 at
        all, and a mask must open everywhere. A NIfTI-2 input's float64 fields are rounded to
        float32 here (at most ~1e-5 mm at 500 mm from the origin)."""
        header = nib.Nifti1Header()
        for key, value in self.fields.items():
            header[key] = value
        return header


def nifti_geometry(header: nib.Nifti1Header, shape: tuple[int, int, int], name: str) -> tuple[NiftiGeometry, list[CaseWarning]]:
    """The placing affine of a NIfTI header (rule above) and the warnings it deserves.

    Args:
        header: the input's header (NIfTI-1 or -2).
        shape: the volume's 3D shape (voxels), to measure how far qform and sform disagree.
        name: the file name, for messages.
    """
    version = 2 if isinstance(header, nib.Nifti2Header) else 1
    fields = {key: np.array(header[key], copy=True) for key in GEOMETRY_FIELDS}
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    warnings = []
    if qcode == 0 and scode == 0:
        warnings.append(CaseWarning(
            ORIENTATION_UNKNOWN,
            f"{name} has qform_code = sform_code = 0: its orientation is unknown and was guessed "
            "from pixdim alone (nibabel's convention; other tools guess differently), so left and "
            "right may be swapped; the mask keeps both codes 0",
        ))
    elif qcode > 0 and scode > 0:
        warning = _disagreement(header, affine, shape, name)
        if warning is not None:
            warnings.append(warning)
    return NiftiGeometry(version=version, affine=affine, fields=fields), warnings


def _disagreement(header: nib.Nifti1Header, sform: np.ndarray, shape: tuple[int, int, int], name: str) -> CaseWarning | None:
    qform = np.asarray(header.get_qform(), dtype=np.float64)
    corners = np.array([[*c, 1.0] for c in itertools.product(*[(0, n - 1) for n in shape])]).T
    distance = float(np.max(np.linalg.norm((sform @ corners - qform @ corners)[:3], axis=0)))
    spacing_s = np.linalg.norm(sform[:3, :3], axis=0)
    spacing_q = np.linalg.norm(qform[:3, :3], axis=0)
    if distance <= _DISAGREE_VOXELS * float(min(spacing_s.min(), spacing_q.min())):
        return None
    return CaseWarning(
        QFORM_SFORM_DISAGREE,
        f"{name}: the sform (code {int(header['sform_code'])}, voxels {_mm(spacing_s)} mm) and the qform "
        f"(code {int(header['qform_code'])}, voxels {_mm(spacing_q)} mm) place the volume up to "
        f"{distance:.1f} mm apart; it was segmented as the sform places it (nibabel's and MONAI's rule), "
        "ITK-based tools may use the qform; the mask carries both unchanged",
    )


def _mm(spacing: np.ndarray) -> str:
    return "x".join(f"{float(s):.4g}" for s in spacing)
