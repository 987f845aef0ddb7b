"""The contract an exported model carries beside its artifacts (``manifest.json``).

The service takes every preprocessing parameter from here (``ModelManifest.preprocess``, the
``PreprocessSpec`` export copies from the checkpoint), never from constants, so a model trained
with another spacing, window or ROI is served correctly without code changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.errors import ModelArtifactError
from service.preprocess_spec import PreprocessSpec

MANIFEST_NAME = "manifest.json"
TORCHSCRIPT_NAME = "model.ts"
ONNX_NAME = "model.onnx"


class ArchitectureConfig(BaseModel):
    """Swin-X Seg hyper-parameters (the keys of the published configuration): the one schema.

    ``model_export.config.SwinXSegConfig`` adds the network's validation and derived sizes to
    these fields; it does not repeat them.
    """

    model_config = ConfigDict(frozen=True)

    patch_size: int = 2
    in_channels: int = 1
    embed_dim: int = 48
    feature_size: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: tuple[int, ...] = (4, 4, 4)
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
    """Everything needed to run an exported model: architecture, preprocessing, labels, artifacts.

    ``preprocess`` is the record the model was trained with (``PreprocessSpec``); ``roi_size``,
    ``target_spacing_mm``, ``hu_window``, ``in_channels`` and ``out_channels`` read it and the
    architecture (as lists, the JSON form). Manifests written before the record, with those keys
    at the top level, still load (``_lift_flat_keys``).
    """

    name: str
    preset: str = "custom"
    architecture: ArchitectureConfig
    labels: dict[int, str]
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    artifacts: dict[str, ArtifactInfo] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    exported_at: str = ""
    notes: str = ""

    @model_validator(mode="before")
    @classmethod
    def _lift_flat_keys(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        flat = {key: data.pop(key) for key in _FLAT_PREPROCESS_KEYS if key in data}
        if flat:
            if "preprocess" in data:
                raise ValueError(f"give the preprocess record or the flat keys {sorted(flat)}, not both")
            data["preprocess"] = flat
        channels = {key: data.pop(key) for key in ("in_channels", "out_channels") if key in data}
        if channels:
            data["architecture"] = _with_channels(data.get("architecture"), channels)
        return data

    @property
    def roi_size(self) -> list[int]:
        return list(self.preprocess.roi_size)

    @property
    def target_spacing_mm(self) -> list[float]:
        return list(self.preprocess.target_spacing_mm)

    @property
    def hu_window(self) -> list[float]:
        return list(self.preprocess.hu_window)

    @property
    def in_channels(self) -> int:
        return self.architecture.in_channels

    @property
    def out_channels(self) -> int:
        return self.architecture.out_channels

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


_FLAT_PREPROCESS_KEYS = ("roi_size", "target_spacing_mm", "hu_window")


def _with_channels(architecture: object, channels: dict[str, int]) -> object:
    """The architecture with legacy top-level ``in_channels``/``out_channels``; a disagreement is an error."""
    if architecture is None:
        return channels
    given = architecture.model_dump() if isinstance(architecture, BaseModel) else dict(architecture)
    explicit = architecture.model_fields_set if isinstance(architecture, BaseModel) else set(given)
    for key, value in channels.items():
        if key in explicit and given[key] != value:
            raise ValueError(f"{key} {value} disagrees with the architecture's {given[key]}")
        given[key] = value
    return given


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
