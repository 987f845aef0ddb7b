from __future__ import annotations

import pytest

from model_export.config import SwinXSegConfig, preset
from service.manifest import ArchitectureConfig


def test_full_preset_is_the_published_configuration():
    config = preset("full")
    assert config.embed_dim == config.feature_size == 48
    assert config.depths == (2, 2, 2, 2)
    assert config.num_heads == (3, 6, 12, 24)
    assert config.window_size == (4, 4, 4)
    assert config.out_channels == 15
    assert config.bottleneck_dim == 768


def test_tiny_preset_and_class_override():
    tiny = preset("tiny", out_channels=3)
    assert (tiny.embed_dim, tiny.feature_size, tiny.out_channels) == (12, 12, 3)
    assert preset("tiny").out_channels == 15


def test_round_trip_through_the_manifest_model():
    config = preset("tiny", out_channels=4)
    arch = config.to_architecture()
    assert isinstance(arch, ArchitectureConfig)
    assert arch.model_dump(mode="json")["depths"] == [2, 2, 2, 2]  # the manifest's JSON form
    assert SwinXSegConfig.from_architecture(arch) == config
    # The manifest's defaults are the published configuration.
    assert SwinXSegConfig.from_architecture(ArchitectureConfig()) == preset("full")


def test_from_dict_ignores_non_architecture_keys():
    config = SwinXSegConfig.from_dict({"embed_dim": 12, "feature_size": 12, "roi_size": [96, 96, 96]})
    assert config.embed_dim == 12


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"feature_size": 24}, "feature_size (24)"),
        ({"num_heads": (5, 6, 12, 24)}, "num_heads[0]=5"),
        ({"depths": (2, 2, 2)}, "depths"),
        ({"window_size": (4, 4)}, "window_size"),
        ({"patch_size": 4}, "patch_size"),
        ({"norm": "instance"}, "'instance'"),
        ({"patch_merge_reduce_factor": 2}, "patch_merge_reduce_factor"),
        ({"out_channels": 0}, "out_channels"),
    ],
)
def test_bad_values_are_named(changes, named):
    with pytest.raises(ValueError, match="invalid Swin-X Seg config") as info:
        SwinXSegConfig(**changes)
    assert named in str(info.value)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")
