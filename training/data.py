"""Training cases: where they come from (datalist, folder pair, phantoms) and their model-grid form.

Every image goes through the service's own ``preprocess`` (RAS, model spacing, body crop, HU
window), so the network trains on exactly what it will be served. The labels follow onto the same
grid by ``labels_to_model_grid``, the nearest-neighbour forward map that ``restore_labels`` undoes.
Prepared cases are kept in memory (a 1 mm phantom is ~35 MB) and, optionally, in a disk cache so
a resumed run does not regenerate them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from service.errors import InvalidInputError
from service.geometry import PreprocessRecord, apply_to_ras, from_ras, preprocess, ras_orientation
from service.preprocess_spec import PreprocessSpec
from service.volume import Volume

log = logging.getLogger(__name__)

# A cached case whose preprocessing parameters or source differ gets another file name.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class PreprocessParams:
    """How training prepares a case: the model's ``PreprocessSpec`` (what the checkpoint records
    and export writes into the manifest) plus the crop options that are the service's ``Settings``."""

    spec: PreprocessSpec = field(default_factory=PreprocessSpec)
    body_margin_mm: float = 0.0
    crop_to: str = "foreground"

    @classmethod
    def service_defaults(cls, spec: PreprocessSpec | None = None) -> PreprocessParams:
        """``spec`` (default: the paper's) with the crop options a default ``Settings`` serves with."""
        from service.settings import Settings

        def default(name):
            return Settings.model_fields[name].get_default(call_default_factory=True)

        return cls(
            spec=spec if spec is not None else PreprocessSpec(),
            body_margin_mm=float(default("body_margin_mm")),
            crop_to=str(default("crop_to")),
        )

    def to_dict(self) -> dict:
        """JSON-able, as stored in a checkpoint's config."""
        return {"spec": self.spec.model_dump(mode="json"), "body_margin_mm": self.body_margin_mm, "crop_to": self.crop_to}

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessParams:
        """From ``to_dict``'s form, or the flat form of runs saved before the ``PreprocessSpec``."""
        if "spec" in data:
            spec = PreprocessSpec.model_validate(data["spec"])
        else:
            spec = PreprocessSpec(
                target_spacing_mm=tuple(data["target_spacing"]),
                hu_window=tuple(data["hu_window"]),
                body_threshold_hu=data.get("body_threshold_hu"),
            )
        # Runs saved before the crop_to option cropped to the body.
        return cls(spec=spec, body_margin_mm=float(data["body_margin_mm"]), crop_to=data.get("crop_to", "body"))


@dataclass(frozen=True)
class FileCase:
    """A labelled CT on disk: ``image`` and ``label`` paths (any format ``read_volume`` reads).

    ``annotated``: the foreground labels the label file covers (None: all of them, a complete
    annotation); ``pseudo_label``: a teacher's label file for the same image (``swinxseg
    pseudo-label``), used by ``--partial refine`` (see ``training.partial``).
    """

    name: str
    image: Path
    label: Path
    annotated: tuple[int, ...] | None = None
    pseudo_label: Path | None = None

    def describe(self) -> str:
        text = f"file:{self.image.resolve()}|{self.label.resolve()}"
        if self.annotated is not None or self.pseudo_label is not None:
            pseudo = self.pseudo_label.resolve() if self.pseudo_label is not None else None
            text += f"|annotated={list(self.annotated or [])}|pseudo={pseudo}"
        return text

    def load(self) -> tuple[Volume, Volume]:
        from service.io.readers import read_volume  # SimpleITK & co. only when files are read

        return read_volume(self.image), read_volume(self.label)

    def load_pseudo(self) -> Volume | None:
        """The teacher's label volume, or None without one."""
        if self.pseudo_label is None:
            return None
        from service.io.readers import read_volume

        return read_volume(self.pseudo_label)


@dataclass(frozen=True)
class PhantomCase:
    """A synthetic phantom (``phantoms.generator``) on a given voxel grid."""

    name: str
    seed: int
    spacing: tuple[float, float, float]
    orientation: str = "RAS"
    oblique_deg: float = 0.0

    annotated = None  # phantoms are completely labelled
    pseudo_label = None

    def describe(self) -> str:
        return f"phantom:{self.seed}|{self.spacing}|{self.orientation}|{self.oblique_deg}"

    def load_pseudo(self) -> None:
        return None

    def load(self) -> tuple[Volume, Volume]:
        from phantoms.generator import make_phantom

        return make_phantom(
            seed=self.seed, spacing=self.spacing, orientation=self.orientation, oblique_deg=self.oblique_deg
        )


CaseSource = FileCase | PhantomCase


@dataclass(eq=False)
class PreparedCase:
    """One case on the model grid: ``image (X, Y, Z)`` float32 in [0, 1], ``labels (X, Y, Z)`` uint8.

    ``annotated``: the labels a partial annotation covers (None: complete); ``pseudo``: the
    teacher's labels on the same grid, when the case has a pseudo-label file.
    """

    name: str
    image: torch.Tensor
    labels: torch.Tensor
    annotated: tuple[int, ...] | None = None
    pseudo: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------
# Case lists
# ------------------------------------------------------------------------------------------------


def read_datalist(path: str | Path) -> dict[str, list[FileCase]]:
    """A Decathlon-style datalist: ``{"training": [{"image", "label"}], "validation": [...]}``.

    Relative paths are relative to the JSON file. Returns ``{"training": [...], "validation": [...]}``
    (validation may be empty). Raises ``InvalidInputError`` naming the entry that is wrong.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read datalist {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("training"), list) or not data["training"]:
        raise InvalidInputError(f'datalist {path} needs a non-empty "training" list')
    return {key: _datalist_entries(data.get(key) or [], path, key) for key in ("training", "validation")}


def _datalist_entries(entries: list, datalist: Path, key: str) -> list[FileCase]:
    from service.io.cases import case_name_for

    cases = []
    for index, entry in enumerate(entries):
        where = f"datalist {datalist}: {key}[{index}]"
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InvalidInputError(f'{where} needs "image" and "label", got {entry!r}')
        image, label = (_relative_to(datalist.parent, entry[k]) for k in ("image", "label"))
        pseudo = _relative_to(datalist.parent, entry["pseudo_label"]) if entry.get("pseudo_label") else None
        for what, file in (("image", image), ("label", label), ("pseudo_label", pseudo)):
            if file is not None and not file.exists():
                raise InvalidInputError(f"{where} {what} {file} does not exist")
        annotated = _annotated(entry.get("annotated"), where)
        if annotated is not None and key == "validation":
            # Dice against a partial annotation scores every organ it leaves out as a miss.
            raise InvalidInputError(f'{where}: validation cases must be completely annotated (drop "annotated")')
        cases.append(
            FileCase(name=case_name_for(image), image=image, label=label, annotated=annotated, pseudo_label=pseudo)
        )
    return cases


def _annotated(value, where: str) -> tuple[int, ...] | None:
    """A datalist entry's ``"annotated"`` list as sorted distinct labels 1..255 (None if absent)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and 1 <= v <= 255 for v in value):
        raise InvalidInputError(f'{where}: "annotated" must be a non-empty list of labels 1..255, got {value!r}')
    return tuple(sorted(set(value)))


def _relative_to(folder: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def pair_folders(images_dir: str | Path, labels_dir: str | Path) -> list[FileCase]:
    """Match ``images_dir`` and ``labels_dir`` by case name (``CASE_0000.nii.gz`` <-> ``CASE.nii.gz``).

    Returns the pairs sorted by name; raises ``InvalidInputError`` listing images without labels
    (labels without images are ignored with a warning).
    """
    from service.io.cases import case_name_for, find_cases

    images = {case_name_for(p): p for p in find_cases(Path(images_dir))}
    labels = {case_name_for(p): p for p in find_cases(Path(labels_dir))}
    missing = sorted(set(images) - set(labels))
    if missing:
        raise InvalidInputError(f"no label in {labels_dir} for image case(s) {', '.join(missing[:10])}")
    if not images:
        raise InvalidInputError(f"no image volumes found in {images_dir}")
    extra = sorted(set(labels) - set(images))
    if extra:
        log.warning("ignoring %d label file(s) without an image: %s", len(extra), ", ".join(extra[:10]))
    return [FileCase(name=name, image=images[name], label=labels[name]) for name in sorted(images)]


# Orientations and grids the demo phantoms are drawn from: what scanners and converters produce.
_PHANTOM_ORIENTATIONS = ("RAS", "LPS", "LAS", "RPS", "LPI", "PIR")


def phantom_cases(
    count: int, seed_start: int, *, varied: bool = True, prefix: str = "phantom"
) -> list[PhantomCase]:
    """``count`` phantoms with seeds ``seed_start, seed_start + 1, ...``.

    ``varied`` draws each grid from the seed: in-plane spacing 0.8-2.5 mm, slices 1-3 mm, an
    orientation from ``_PHANTOM_ORIENTATIONS`` and, one case in five, an oblique tilt of 5-15
    degrees. Otherwise every phantom is RAS at the phantom's default spacing.
    """
    from phantoms.generator import DEFAULT_SPACING

    cases = []
    for seed in range(seed_start, seed_start + count):
        if not varied:
            cases.append(PhantomCase(f"{prefix}_{seed}", seed, tuple(DEFAULT_SPACING)))
            continue
        rng = np.random.default_rng([seed, 0x6E0])  # a stream apart from the phantom's own
        in_plane = round(float(rng.uniform(0.8, 2.5)), 3)
        slices = round(float(rng.uniform(1.0, 3.0)), 3)
        orientation = _PHANTOM_ORIENTATIONS[int(rng.integers(len(_PHANTOM_ORIENTATIONS)))]
        oblique = round(float(rng.uniform(5.0, 15.0)), 2) if rng.random() < 0.2 else 0.0
        spacing = _slice_axis_spacing(orientation, in_plane, slices)
        cases.append(PhantomCase(f"{prefix}_{seed}", seed, spacing, orientation, oblique))
    return cases


def _slice_axis_spacing(orientation: str, in_plane: float, slices: float) -> tuple[float, float, float]:
    # The thick (slice) spacing goes on whichever voxel axis runs superior-inferior.
    return tuple(slices if code in "SI" else in_plane for code in orientation)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# Model grid
# ------------------------------------------------------------------------------------------------


def labels_to_model_grid(labels: Volume | np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Labels on the input grid ``(I, J, K)`` -> uint8 ``(x, y, z)`` on the preprocessed image's grid.

    The forward nearest-neighbour map matching ``preprocess``: reorient to RAS exactly as the
    image was; along each resampled axis, model voxel ``j`` takes RAS index ``round(j * t / s)``
    (clamped to the axis); then the body crop. ``restore_labels`` is its (near) inverse.
    """
    array = labels.array if isinstance(labels, Volume) else np.asarray(labels)
    if array.shape != record.original_shape:
        raise ValueError(
            f"labels shape {array.shape} != the preprocessed image's input shape {record.original_shape}"
        )
    ras = apply_to_ras(array, record.orientation)
    resample = record.resample
    for axis in range(3):
        if resample.axis_changes(axis):
            ratio = resample.spacing_out[axis] / resample.spacing_in[axis]
            positions = np.rint(np.arange(resample.shape_out[axis], dtype=np.float64) * ratio)
            index = np.clip(positions, 0, resample.shape_in[axis] - 1).astype(np.int64)
            ras = np.take(ras, index, axis=axis)
    return np.ascontiguousarray(ras[record.crop_box.slices], dtype=np.uint8)


def labels_on_image_grid(
    labels: Volume, image: Volume, *, name: str, tolerance_mm: float = 1e-3
) -> np.ndarray:
    """``labels``' array laid out on ``image``'s voxel grid, as uint8.

    Label files stored with another axis order or direction but the same world grid (e.g. LAS
    labels for an LPS series) are permuted/flipped exactly; any other mismatch is an error.
    """
    array = np.asarray(labels.array)
    if array.size and (array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.rint(array))):
        raise InvalidInputError(f"{name}: label values must be integers 0..255")
    label_record = ras_orientation(labels.affine, labels.shape)
    image_record = ras_orientation(image.affine, image.shape)
    label_ras_affine = labels.affine @ label_record.voxel_map()
    image_ras_affine = image.affine @ image_record.voxel_map()
    if label_record.ras_shape != image_record.ras_shape or not np.allclose(
        label_ras_affine, image_ras_affine, atol=tolerance_mm
    ):
        raise InvalidInputError(
            f"{name}: label grid {labels.shape} does not match image grid {image.shape} "
            f"(affines {labels.affine.round(3).tolist()} vs {image.affine.round(3).tolist()})"
        )
    on_image = from_ras(apply_to_ras(array, label_record), image_record)
    return np.ascontiguousarray(on_image).astype(np.uint8)


def prepare_case(
    name: str,
    ct: Volume,
    labels: Volume,
    params: PreprocessParams,
    *,
    annotated: tuple[int, ...] | None = None,
    pseudo: Volume | None = None,
) -> PreparedCase:
    """Preprocess ``ct`` with the service's ``preprocess`` and bring ``labels`` (and the teacher's
    ``pseudo`` labels, if given) onto the same grid.

    Raises ``InvalidInputError`` for a label grid that does not match the image's, or a label file
    that draws labels outside ``annotated``.
    """
    from training.partial import check_annotated_labels

    label_array = labels_on_image_grid(labels, ct, name=name)
    try:
        check_annotated_labels(name, label_array, annotated)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    prepared = preprocess(
        ct, params.spec, body_margin_mm=params.body_margin_mm, crop_to=params.crop_to, device="cpu"
    )
    model_labels = labels_to_model_grid(label_array, prepared.record)
    model_pseudo = None
    if pseudo is not None:
        pseudo_array = labels_on_image_grid(pseudo, ct, name=f"{name} (pseudo label)")
        model_pseudo = torch.from_numpy(labels_to_model_grid(pseudo_array, prepared.record))
    return PreparedCase(
        name=name,
        image=prepared.image.contiguous(),
        labels=torch.from_numpy(model_labels),
        annotated=annotated,
        pseudo=model_pseudo,
    )


# ------------------------------------------------------------------------------------------------
# Loading with an optional disk cache
# ------------------------------------------------------------------------------------------------


def _cache_path(cache_dir: Path, source: CaseSource, params: PreprocessParams) -> Path:
    # The ROI does not change a prepared case (windows and patches are cut later).
    prepared_by = {**params.to_dict(), "spec": params.spec.model_dump(mode="json", exclude={"roi_size"})}
    key = json.dumps([_CACHE_VERSION, source.describe(), prepared_by], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{source.name}-{digest}.pt"


def load_cases(
    sources: Iterable[CaseSource], params: PreprocessParams, *, cache_dir: str | Path | None = None
) -> list[PreparedCase]:
    """Read (or generate) and prepare every case, in order.

    With ``cache_dir``, a prepared case is saved there once and read back on later runs (the file
    name hashes the source and the preprocessing parameters, so a change never reads stale data).
    """
    from training.checkpointing import atomic_save

    cache = Path(cache_dir) if cache_dir is not None else None
    prepared = []
    for source in sources:
        started = time.perf_counter()
        path = _cache_path(cache, source, params) if cache is not None else None
        if path is not None and path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            case = PreparedCase(
                source.name, saved["image"], saved["labels"], getattr(source, "annotated", None), saved.get("pseudo")
            )
        else:
            ct, labels = source.load()
            # Sources without partial-label support (any object with name/load) are complete.
            pseudo = source.load_pseudo() if hasattr(source, "load_pseudo") else None
            case = prepare_case(
                source.name, ct, labels, params, annotated=getattr(source, "annotated", None), pseudo=pseudo
            )
            if path is not None:
                saved = {"image": case.image, "labels": case.labels}
                if case.pseudo is not None:
                    saved["pseudo"] = case.pseudo
                atomic_save(saved, path)
        log.info(
            "case %s: model grid %s, labels %s (%.1f s)",
            case.name,
            tuple(case.image.shape),
            _present_labels(case.labels),
            time.perf_counter() - started,
        )
        prepared.append(case)
    return prepared


def _present_labels(labels: torch.Tensor) -> list[int]:
    return [int(v) for v in torch.unique(labels) if v != 0]


def split_holdout(cases: Sequence[FileCase], count: int) -> tuple[list[FileCase], list[FileCase]]:
    """The last ``count`` cases (by name order) as validation, the rest for training."""
    if count < 0 or count >= len(cases):
        raise InvalidInputError(
            f"cannot hold out {count} of {len(cases)} cases for validation (need >= 1 to train)"
        )
    cut = len(cases) - count
    return list(cases[:cut]), list(cases[cut:])
