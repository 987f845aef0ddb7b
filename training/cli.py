"""``swinxseg train``: fine-tune Swin-X Seg on labelled CTs (datalist, folder pair or phantoms).

Examples::

    swinxseg train --datalist data/dataset.json --out runs/ft --preset full --init published.pt
    swinxseg train --images imagesTr --labels labelsTr --val-count 4 --out runs/ft
    swinxseg train --phantoms 32 --phantom-seed-start 1000 --val-phantoms 4 --out runs/demo
    swinxseg train --resume runs/demo            # continue exactly where the run stopped
    swinxseg train --datalist runs/pseudo/datalist.json --partial refine --init-from runs/smit/encoder.pt --out runs/ft

Stopping: ``kill -TERM PID`` (or ``--pause-at N``) finishes the current step and saves ``last.pt``.

Options left out on ``--resume`` come from the checkpoint (data source included); ``--steps``
may be raised to train longer (the cosine schedule then stretches to the new end).
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from service.cli_flags import error_line
from service.errors import InvalidInputError

log = logging.getLogger(__name__)

HELP = "fine-tune Swin-X Seg on labelled CTs"

# CLI option -> TrainConfig field, for the hyper-parameters that default to None on the command
# line so that "not given" can mean "as in the checkpoint" on --resume.
CONFIG_OPTIONS = (
    "preset",
    "out_channels",
    "patch_size",
    "batch_size",
    "steps",
    "lr",
    "weight_decay",
    "warmup_steps",
    "min_lr_ratio",
    "positive",
    "negative",
    "label_weights",
    "class_weights",
    "flip_axes",
    "intensity_prob",
    "organ_contrast_prob",
    "slab_prob",
    "dice",
    "precision",
    "val_interval",
    "val_overlap",
    "checkpoint_interval",
    "log_interval",
    "seed",
    "threads",
    "init",
    "init_from",
    "partial",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``swinxseg train``'s options on ``parser``."""
    data = parser.add_argument_group("data (one source; omit all on --resume to reuse the run's)")
    data.add_argument("--datalist", type=Path, help="Decathlon-style JSON with training/validation lists")
    data.add_argument("--images", type=Path, help="folder of CT volumes (paired with --labels by case name)")
    data.add_argument("--labels", type=Path, help="folder of label volumes")
    data.add_argument(
        "--val-count", type=int, default=0, help="with --images/--labels: hold out the last N cases"
    )
    data.add_argument("--phantoms", type=int, help="train on N synthetic phantoms generated on the fly")
    data.add_argument(
        "--phantom-seed-start", type=int, default=1000, help="seed of the first training phantom"
    )
    data.add_argument("--val-phantoms", type=int, default=4, help="validation phantoms (with --phantoms)")
    data.add_argument("--val-seed-start", type=int, default=5000, help="seed of the first validation phantom")
    data.add_argument(
        "--phantom-grid",
        choices=("varied", "default"),
        default="varied",
        help="varied orientations/spacings/obliques (default) or all RAS at the phantom spacing",
    )
    data.add_argument(
        "--cache-dir",
        type=Path,
        help="keep preprocessed cases here for later runs (default: RUN/cache if it exists)",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--out", type=Path, help="run folder for last.pt, best.pt, log.jsonl (default: --resume's)"
    )
    run.add_argument("--resume", type=Path, help="checkpoint file or run folder (its last.pt) to continue")
    run.add_argument(
        "--pause-at",
        type=int,
        help="save and stop at this step (resume later with --resume); "
        "unlike a smaller --steps it leaves the learning-rate schedule unchanged",
    )
    run.add_argument("--init", help="start from these weights (published {'state_dict': ...} format)")
    run.add_argument(
        "--init-from",
        help="start the encoder from a `swinxseg pretrain` encoder checkpoint (encoder.pt); the "
        "decoder keeps its fresh weights; the keys loaded and left are reported",
    )
    run.add_argument("--preset", choices=("tiny", "full"), help="network size (default tiny)")
    run.add_argument("--out-channels", type=int, help="classes incl. background (default 15, FLARE-23)")
    run.add_argument("--steps", type=int, help="optimizer steps in total (default 1000)")
    run.add_argument("--seed", type=int, help="seed of the weights and the patch sampler (default 0)")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    run.add_argument(
        "--device",
        default="auto",
        help="where the network trains: auto (CUDA when available, the default), cpu, cuda or cuda:N; "
        "not part of the run's config, so a run may resume on another device",
    )

    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--partial",
        choices=("none", "refine", "mask"),
        help="how to train on datalist entries with an \"annotated\" list (partial labels): none (as if "
        "complete, the default), refine (annotated labels from the ground truth, the rest from the entry's "
        "pseudo_label: see `swinxseg pseudo-label`) or mask (the loss ignores the classes a case does not "
        "annotate)",
    )
    recipe.add_argument("--patch-size", type=int, help="cubic patch side, multiple of 32 (default 96)")
    recipe.add_argument("--batch-size", type=int, help="patches per step (default 2)")
    recipe.add_argument("--lr", type=float, help="peak AdamW learning rate (default 2e-4)")
    recipe.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-5)")
    recipe.add_argument(
        "--warmup-steps", type=int, help="linear warm-up steps before the cosine (default 100)"
    )
    recipe.add_argument("--min-lr-ratio", type=float, help="cosine floor as a fraction of --lr (default 0)")
    recipe.add_argument(
        "--positive", type=int, help="positive (foreground-centred) share of patches (default 2)"
    )
    recipe.add_argument("--negative", type=int, help="negative (anywhere) share of patches (default 1)")
    recipe.add_argument(
        "--label-weights",
        type=_label_weights,
        help="how often each label is drawn as a positive centre, e.g. '2:3,7:3,8:3,13:3' "
        "(unlisted labels weigh 1; default all equal)",
    )
    recipe.add_argument(
        "--class-weights",
        type=_label_weights,
        help="loss weight per class (cross-entropy and Dice), e.g. '7:8,8:8' for small organs the "
        "network has not found yet (unlisted classes weigh 1)",
    )
    recipe.add_argument(
        "--flip-axes",
        type=_axes,
        help="axes to flip at random, e.g. '1,2'; default none. "
        "Axis 0 (left-right) swaps the left/right kidney and adrenal labels",
    )
    recipe.add_argument("--intensity-prob", type=float, help="chance of a random intensity scale/shift (0.5)")
    recipe.add_argument("--organ-contrast-prob", type=float,
                        help="chance of a simulated contrast phase: each organ's HU shifted by its own "
                        "enhancement (training.sampling.ENHANCEMENT_HU; default 0)")
    recipe.add_argument("--slab-prob", type=float,
                        help="chance of a partial field of view in z: a slab of 24 voxels or more kept, "
                        "the rest padded as the sliding window pads a short scan (default 0)")
    recipe.add_argument(
        "--dice",
        choices=("batch", "sample"),
        help="Dice pooled over the batch without numerator smoothing (default), or per patch (MONAI's default)",
    )
    recipe.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="network arithmetic while training: fp32 (default) or bf16 autocast, about 2x faster on "
        "CPUs with AVX512-BF16/AMX and slower on those without; convolutions whose bf16 gradients "
        "this CPU gets wrong are found at start and kept in fp32",
    )
    recipe.add_argument(
        "--spacing-mm", type=float, nargs=3, metavar=("X", "Y", "Z"),
        help="model grid spacing in mm, recorded in the checkpoint for export (default 1 1 1, the paper's)",
    )
    recipe.add_argument(
        "--hu-window", type=float, nargs=2, metavar=("LOW", "HIGH"),
        help="HU window mapped to [0, 1], recorded in the checkpoint for export (default -250 250, the paper's)",
    )
    recipe.add_argument("--val-interval", type=int, help="validate every N steps (default 250)")
    recipe.add_argument("--val-overlap", type=float, help="sliding-window overlap when validating (0.25)")
    recipe.add_argument("--checkpoint-interval", type=int, help="save last.pt every N steps (default 100)")
    recipe.add_argument("--log-interval", type=int, help="log a loss line every N steps (default 10)")


def _axes(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text in ("", "none"):
        return ()
    try:
        return tuple(int(a) for a in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated axes like '1,2', got {text!r}") from None


def _label_weights(text: str) -> dict[int, float]:
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        weights = {int(label): float(weight) for label, weight in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected label:weight pairs like '2:3,7:3', got {text!r}") from None
    return weights  # TrainConfig checks the values


def _data_spec(args: argparse.Namespace) -> dict | None:
    """The data source named on the command line, as a JSON-able dict (None: none named)."""
    named = [
        n
        for n, given in (
            ("datalist", args.datalist),
            ("folders", args.images or args.labels),
            ("phantoms", args.phantoms),
        )
        if given
    ]
    if len(named) > 1:
        raise InvalidInputError(f"choose one data source, got {' and '.join(named)}")
    if not named:
        return None
    if named[0] == "datalist":
        return {"kind": "datalist", "path": str(args.datalist.resolve())}
    if named[0] == "folders":
        if not (args.images and args.labels):
            raise InvalidInputError("--images and --labels go together")
        return {
            "kind": "folders",
            "images": str(args.images.resolve()),
            "labels": str(args.labels.resolve()),
            "val_count": args.val_count,
        }
    if args.phantoms < 1 or args.val_phantoms < 0:
        raise InvalidInputError(
            f"--phantoms must be >= 1 and --val-phantoms >= 0, got {args.phantoms}, {args.val_phantoms}"
        )
    return {
        "kind": "phantoms",
        "count": args.phantoms,
        "seed_start": args.phantom_seed_start,
        "val_count": args.val_phantoms,
        "val_seed_start": args.val_seed_start,
        "varied": args.phantom_grid == "varied",
    }


def sources_for(spec: dict) -> tuple[list, list]:
    """(training sources, validation sources) for a data spec from ``_data_spec``."""
    from training.data import pair_folders, phantom_cases, read_datalist, split_holdout

    kind = spec.get("kind")
    if kind == "datalist":
        lists = read_datalist(spec["path"])
        return lists["training"], lists["validation"]
    if kind == "folders":
        return split_holdout(pair_folders(spec["images"], spec["labels"]), int(spec.get("val_count", 0)))
    if kind == "phantoms":
        varied = bool(spec.get("varied", True))
        return (
            phantom_cases(spec["count"], spec["seed_start"], varied=varied),
            phantom_cases(spec["val_count"], spec["val_seed_start"], varied=varied, prefix="val_phantom"),
        )
    raise InvalidInputError(f"unknown data source {spec!r}")


def resolve_config(args: argparse.Namespace, saved: dict | None):
    """TrainConfig from defaults, overlaid by the checkpoint's config, overlaid by the given options."""
    from training.data import PreprocessParams
    from training.loop import TrainConfig

    values = TrainConfig(preprocess=PreprocessParams.service_defaults()).to_dict()
    if saved:
        values.update(saved)
        # Runs saved before the option existed trained with per-patch Dice; resume them unchanged.
        if "dice" not in saved:
            values["dice"] = "sample"
    for name in CONFIG_OPTIONS:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = list(given) if isinstance(given, tuple) else given
    spec = _data_spec(args)
    if spec is not None:
        values["data"] = spec
    _apply_preprocess_options(args, values)
    if not values.get("data"):
        raise InvalidInputError("no training data: give --datalist, --images/--labels or --phantoms")
    try:
        return TrainConfig.from_dict(values)
    except ValueError as exc:
        raise InvalidInputError(error_line(exc)) from None
    except TypeError as exc:
        raise InvalidInputError(str(exc)) from None


def _apply_preprocess_options(args: argparse.Namespace, values: dict) -> None:
    """``--spacing-mm`` / ``--hu-window`` into the config's ``PreprocessSpec`` (``values`` in place)."""
    from training.data import PreprocessParams

    changes = {
        field: tuple(given)
        for field, given in (
            ("target_spacing_mm", getattr(args, "spacing_mm", None)),
            ("hu_window", getattr(args, "hu_window", None)),
        )
        if given is not None
    }
    if not changes:
        return
    params = PreprocessParams.from_dict(values["preprocess"])
    try:
        spec = params.spec.replace(**changes)
    except ValueError as exc:
        raise InvalidInputError(f"--spacing-mm/--hu-window: {error_line(exc)}") from None
    values["preprocess"] = {**params.to_dict(), "spec": spec.model_dump(mode="json")}


class _StopFlag:
    """Set by SIGTERM: the loop saves ``last.pt`` at the end of the current step and returns."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        log.warning("SIGTERM: finishing the current step, then saving")
        self.requested = True


def _training_device(name: str):
    """``--device`` resolved as the service resolves its own (``auto``: CUDA when available)."""
    from service.inference.predictors import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise InvalidInputError(f"--device: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Entry point of ``swinxseg train``; returns the exit code."""
    from training.checkpointing import load_training_state, resolve_checkpoint_path
    from training.data import load_cases
    from training.loop import train

    device = _training_device(args.device)
    state = load_training_state(args.resume) if args.resume else None
    config = resolve_config(args, state["config"] if state else None)
    out_dir = args.out or (resolve_checkpoint_path(args.resume).parent if args.resume else None)
    if out_dir is None:
        raise InvalidInputError("--out is required for a new run")
    if state is None and (Path(out_dir) / "last.pt").is_file():
        raise InvalidInputError(
            f"{out_dir} already holds a run (last.pt): continue it with --resume {out_dir} "
            "or choose another --out"
        )
    if state is not None and config.steps <= state["step"]:
        print(
            f"swinxseg train: checkpoint is already at step {state['step']} of {config.steps}; nothing to do"
        )
        return 0
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)  # also speeds up preprocessing below
    cache_dir = args.cache_dir
    if cache_dir is None and (Path(out_dir) / "cache").is_dir():
        cache_dir = Path(out_dir) / "cache"  # a resumed run finds the cases it prepared last time
    train_sources, val_sources = sources_for(config.data)
    train_cases = load_cases(train_sources, config.preprocess, cache_dir=cache_dir)
    val_cases = load_cases(val_sources, config.preprocess, cache_dir=cache_dir)
    stop = _StopFlag()
    stop.install()
    result = train(
        config,
        train_cases,
        val_cases,
        out_dir,
        resume_state=state,
        until=args.pause_at,
        should_stop=stop,
        device=device,
    )
    losses = [r["loss"] for r in result.history if "loss" in r]
    print(
        f"swinxseg train: step {result.step}/{config.steps}, last loss {losses[-1]:.4f}"
        if losses
        else f"swinxseg train: step {result.step}/{config.steps}"
    )
    if result.init_report:
        print(f"  {result.init_report}")
    print(f"  last checkpoint: {result.last}")
    if result.best is not None:
        print(f"  best checkpoint: {result.best} (mean validation Dice {result.best_mean_dice:.4f})")
    return 0
