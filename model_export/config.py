"""Swin-X Seg's network-side view of ``service.manifest.ArchitectureConfig``, and the named presets.

The fields are defined once, in ``ArchitectureConfig`` (the manifest's schema); ``SwinXSegConfig``
adds only what building the network needs: validation of the values it can be built with, and
the derived sizes.
"""

from __future__ import annotations

from pydantic import model_validator

from service.manifest import ArchitectureConfig

NUM_STAGES = 4
# The decoder upsamples five times by 2, so the encoder must reduce by exactly 2 * 2**4 = 32.
INPUT_MULTIPLE = 32


class SwinXSegConfig(ArchitectureConfig):
    """``ArchitectureConfig`` that the network can be built with (immutable, hashable).

    Stage ``i`` of the encoder works on ``embed_dim * 2**i`` channels with ``num_heads[i]`` heads; the
    decoder reduces every skip to ``feature_size`` channels, which the published network ties to
    ``embed_dim``. Construction raises ``ValueError`` (pydantic's ``ValidationError``) naming every
    value the network cannot be built with.
    """

    @model_validator(mode="after")
    def _buildable(self) -> SwinXSegConfig:
        self.validate_values()
        return self

    def validate_values(self) -> None:
        """Raise ``ValueError`` naming every value the network cannot be built with."""
        problems = [*self._shape_problems(), *self._published_layout_problems()]
        if problems:
            raise ValueError("invalid Swin-X Seg config: " + "; ".join(problems))

    def _shape_problems(self) -> list[str]:
        problems: list[str] = []
        for name in ("in_channels", "out_channels", "embed_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.feature_size != self.embed_dim:
            problems.append(
                f"feature_size ({self.feature_size}) must equal embed_dim ({self.embed_dim}) "
                "in Swin-X Seg's decoder"
            )
        if len(self.depths) != NUM_STAGES or any(d < 1 for d in self.depths):
            problems.append(f"depths must be {NUM_STAGES} positive integers, got {list(self.depths)}")
        if len(self.num_heads) != NUM_STAGES or any(h < 1 for h in self.num_heads):
            problems.append(f"num_heads must be {NUM_STAGES} positive integers, got {list(self.num_heads)}")
        else:
            for stage, heads in enumerate(self.num_heads):
                dim = self.stage_dim(stage)
                if dim % heads:
                    problems.append(f"num_heads[{stage}]={heads} does not divide stage {stage}'s dim {dim}")
        if len(self.window_size) != 3 or any(w < 1 for w in self.window_size):
            problems.append(f"window_size must be 3 positive integers, got {list(self.window_size)}")
        if self.mlp_ratio <= 0:
            problems.append(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        return problems

    def _published_layout_problems(self) -> list[str]:
        problems: list[str] = []
        if self.patch_size != 2:
            problems.append(f"patch_size must be 2 (the decoder upsamples 5 x 2), got {self.patch_size}")
        if self.patch_merge_reduce_factor != 4:
            problems.append(
                "patch_merge_reduce_factor must be 4 (patch merging maps 8d -> 2d channels), "
                f"got {self.patch_merge_reduce_factor}"
            )
        if self.norm != "batch":
            problems.append(
                f"norm must be 'batch' (the published checkpoints use BatchNorm), got {self.norm!r}"
            )
        return problems

    def stage_dim(self, stage: int) -> int:
        """Channels of encoder stage ``stage`` (0-based): ``embed_dim * 2**stage``."""
        return self.embed_dim * 2**stage

    @property
    def bottleneck_dim(self) -> int:
        """Channels of the bottleneck tokens (after the last patch merging): ``16 * embed_dim``."""
        return self.embed_dim * 2**NUM_STAGES

    # --- conversion to and from the manifest's model -----------------------------------------------
    def to_architecture(self) -> ArchitectureConfig:
        return ArchitectureConfig(**self.model_dump())

    @classmethod
    def from_architecture(cls, arch: ArchitectureConfig) -> SwinXSegConfig:
        return cls(**arch.model_dump())

    @classmethod
    def from_dict(cls, data: dict) -> SwinXSegConfig:
        """Build from a mapping such as the golden file's ``config``; unknown keys (``roi_size``) are ignored."""
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})

    def with_out_channels(self, out_channels: int) -> SwinXSegConfig:
        return type(self)(**{**self.model_dump(), "out_channels": int(out_channels)})


PRESETS: dict[str, SwinXSegConfig] = {}


def _presets() -> dict[str, SwinXSegConfig]:
    # Built on first use so importing this module does no work.
    if not PRESETS:
        PRESETS["full"] = SwinXSegConfig()  # the published configuration, 30,298,677 parameters
        PRESETS["tiny"] = SwinXSegConfig(embed_dim=12, feature_size=12)  # for tests and smoke runs
    return PRESETS


def preset_names() -> list[str]:
    return sorted(_presets())


def preset(name: str, *, out_channels: int | None = None) -> SwinXSegConfig:
    """The named configuration (``full`` or ``tiny``), optionally with another number of classes."""
    presets = _presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(presets))}")
    config = presets[name]
    if out_channels is not None:
        config = config.with_out_channels(out_channels)
    return config
