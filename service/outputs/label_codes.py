"""How each FLARE-23 label is named, coloured and coded in DICOM outputs.

SNOMED CT codes (scheme ``SCT``) from DICOM PS3.16: segmentation property category CID 7150
(Anatomical Structure 123037004; Morphologically Altered Structure 49755003), property types
from CID 7151/CID 4031 (Liver 10200004, Kidney 64033007, Spleen 78961009, Pancreas 15776009,
Aorta 15825003, Inferior vena cava 64131007, Adrenal gland 23451007, Gallbladder 28231008,
Esophagus 32849002, Stomach 69695003, Duodenum 38848004, Neoplasm 108369006), laterality as a
property type modifier from CID 244 (Right 24028007, Left 7771000), as dcmqi and the DICOM
SEG examples code paired organs. Colours: 3D Slicer's GenericAnatomyColors table, which
planning systems and viewers show for these organs; the tumour is red.

RT ROI Interpreted Type: ORGAN for labels 1-13; the FLARE-23 tumour (label 14) is ``GTV``,
the visible gross lesion a planner starts from (it is an unapproved automatic contour, see
ApprovalStatus, that a clinician must review).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.labels import FLARE23_LABELS, TUMOR_LABEL

ANATOMICAL_STRUCTURE = ("123037004", "Anatomical Structure")
ALTERED_STRUCTURE = ("49755003", "Morphologically Altered Structure")
RIGHT, LEFT = ("24028007", "Right"), ("7771000", "Left")


@dataclass(frozen=True)
class LabelCoding:
    """One label's DICOM description: category/type codes (value, meaning), colour (RGB 0-255)."""

    label: int
    name: str
    category: tuple[str, str]
    type: tuple[str, str]
    modifier: tuple[str, str] | None
    colour: tuple[int, int, int]
    rt_interpreted_type: str


_TABLE: dict[int, tuple[tuple[str, str], tuple[str, str] | None, tuple[int, int, int]]] = {
    1: (("10200004", "Liver"), None, (221, 130, 101)),
    2: (("64033007", "Kidney"), RIGHT, (185, 102, 83)),
    3: (("78961009", "Spleen"), None, (157, 108, 162)),
    4: (("15776009", "Pancreas"), None, (249, 180, 111)),
    5: (("15825003", "Aorta"), None, (224, 97, 76)),
    6: (("64131007", "Inferior vena cava"), None, (0, 151, 206)),
    7: (("23451007", "Adrenal gland"), RIGHT, (244, 217, 154)),
    8: (("23451007", "Adrenal gland"), LEFT, (244, 217, 154)),
    9: (("28231008", "Gallbladder"), None, (139, 150, 98)),
    10: (("32849002", "Esophagus"), None, (211, 171, 143)),
    11: (("69695003", "Stomach"), None, (216, 132, 105)),
    12: (("38848004", "Duodenum"), None, (255, 253, 229)),
    13: (("64033007", "Kidney"), LEFT, (185, 102, 83)),
    14: (("108369006", "Neoplasm"), None, (255, 0, 0)),
}


def coding_for(label: int, name: str | None = None) -> LabelCoding:
    """The coding of FLARE-23 ``label`` (1-14); ``name`` (the manifest's) overrides the ROI name.

    A label outside the table (a model with other labels) is coded as Tissue (85756007), grey.
    """
    type_code, modifier, colour = _TABLE.get(label, (("85756007", "Tissue"), None, (128, 128, 128)))
    is_tumour = label == TUMOR_LABEL
    return LabelCoding(
        label=label,
        name=name or FLARE23_LABELS.get(label, f"label_{label}"),
        category=ALTERED_STRUCTURE if is_tumour else ANATOMICAL_STRUCTURE,
        type=type_code,
        modifier=modifier,
        colour=colour,
        rt_interpreted_type="GTV" if is_tumour else "ORGAN",
    )
