"""The contract an exported model carries beside its artifacts (``manifest.json``).

The service takes every preprocessing parameter from here, never from constants, so a model
trained with another spacing, window or ROI is served correctly without code changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator

from service.errors import ModelArtifactError

MANIFEST_NAME = "manifest.json"
TORCHSCRIPT_NAME = "model.ts"
ONNX_NAME = "model.onnx"


class ArchitectureConfig(BaseModel):
    """Swin-X Seg hyper-parameters (the keys of the published configuration)."""

    patch_size: int = 2
    in_channels: int = 1
    embed_dim: int = 48
    feature_size: int = 48
    depths: list[int] = Field(default_factory=lambda: [2, 2, 2, 2])
    num_heads: list[int] = Field(default_factory=lambda: [3, 6, 12, 24])
    window_size: list[int] = Field(default_factory=lambda: [4, 4, 4])
    mlp_ratio: float = 4.0
    patch_merge_reduce_factor: int = 4
    qkv_bias: bool = True
    patch_norm: bool = True
    norm: str = "batch"
    out_channels: int = 15


class ArtifactInfo(BaseModel):
    file: str
    sha256: str
    format: str  # "torchscript" | "onnx"


class ModelManifest(BaseModel):
    """Everything needed to run an exported model: geometry, intensities, labels, artifacts."""

    name: str
    preset: str = "custom"
    architecture: ArchitectureConfig
    labels: dict[int, str]
    roi_size: list[int] = Field(default_factory=lambda: [96, 96, 96])
    target_spacing_mm: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    hu_window: list[float] = Field(default_factory=lambda: [-250.0, 250.0])
    in_channels: int = 1
    out_channels: int = 15
    artifacts: dict[str, ArtifactInfo] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    exported_at: str = ""
    notes: str = ""

    @field_validator("roi_size", "target_spacing_mm")
    @classmethod
    def _three_values(cls, value: list) -> list:
        if len(value) != 3 or any(v <= 0 for v in value):
            raise ValueError(f"expected three positive values, got {value}")
        return value

    @field_validator("hu_window")
    @classmethod
    def _window_ordered(cls, value: list[float]) -> list[float]:
        if len(value) != 2 or value[0] >= value[1]:
            raise ValueError(f"expected [low, high] with low < high, got {value}")
        return value

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(model_dir: Path, *, verify_checksums: bool = True) -> ModelManifest:
    """Read and validate ``model_dir/manifest.json``; optionally check each artifact's sha256."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ModelArtifactError(f"no {MANIFEST_NAME} in model folder {model_dir}")
    try:
        manifest = ModelManifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelArtifactError(f"{path} is not a valid model manifest: {exc}") from None
    if verify_checksums:
        for fmt, info in manifest.artifacts.items():
            artifact = model_dir / info.file
            if not artifact.is_file():
                raise ModelArtifactError(f"manifest lists {fmt} artifact {info.file}, missing in {model_dir}")
            actual = sha256_of(artifact)
            if actual != info.sha256:
                raise ModelArtifactError(
                    f"{artifact} sha256 {actual[:12]}... does not match the manifest ({info.sha256[:12]}...)"
                )
    return manifest
