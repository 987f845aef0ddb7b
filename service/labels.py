"""FLARE-23 label table (0 background, 1-13 organs, 14 tumour) and NSD tolerances."""

from __future__ import annotations

FLARE23_LABELS: dict[int, str] = {
    0: "background",
    1: "liver",
    2: "right_kidney",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "inferior_vena_cava",
    7: "right_adrenal_gland",
    8: "left_adrenal_gland",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "left_kidney",
    14: "tumor",
}

# Normalised surface distance tolerances in mm, labels 1..14 (FLARE-23 evaluation).
FLARE23_NSD_TOLERANCE_MM: dict[int, float] = dict(
    zip(range(1, 15), (5, 3, 3, 5, 2, 2, 2, 2, 2, 3, 5, 7, 3, 2), strict=True)
)

ORGAN_LABELS: tuple[int, ...] = tuple(range(1, 14))
TUMOR_LABEL = 14
