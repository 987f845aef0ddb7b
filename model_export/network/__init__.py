"""The Swin-X Seg network: ``SwinXSeg(config)`` with the published state_dict layout."""

from model_export.network.init import seeded_init
from model_export.network.swinxseg import SwinXSeg

__all__ = ["SwinXSeg", "seeded_init"]
