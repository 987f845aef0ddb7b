"""``swinxseg pretrain``: self-supervised (SMIT) pre-training of Swin-X Seg's encoder on unlabelled CTs.

Examples::

    swinxseg pretrain --datalist data/dataset.json --out runs/smit --steps 20000 --device cuda --precision bf16
    swinxseg pretrain --images imagesTs --out runs/smit
    swinxseg pretrain --phantoms 8 --out runs/smit-demo --patch-size 64 --steps 300
    swinxseg pretrain --resume runs/smit --steps 40000    # continue (longer) exactly where it stopped

A datalist contributes every image it names ("training", "validation", and "unlabelled" entries,
which need only "image"): labels are not used. The run writes ``last.pt`` (resumable) and
``encoder.pt``; fine-tune from it with ``swinxseg train --init-from runs/smit/encoder.pt``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from service.errors import InvalidInputError

log = logging.getLogger(__name__)

HELP = "self-supervised pre-training of the encoder (SMIT) on CTs, labelled or not"

# CLI option -> PretrainConfig field (None on the command line: the default, or the checkpoint's).
CONFIG_OPTIONS = (
    "preset", "patch_size", "batch_size", "steps", "lr", "weight_decay", "warmup_steps", "mask_prob", "ema",
    "precision", "seed", "threads", "log_interval", "checkpoint_interval",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``swinxseg pretrain``'s options on ``parser``."""
    data = parser.add_argument_group("data (one source; omit on --resume)")
    data.add_argument("--datalist", type=Path, help="JSON whose training/validation/unlabelled entries name images")
    data.add_argument("--images", type=Path, help="folder of CT volumes")
    data.add_argument("--phantoms", type=int, help="N synthetic phantoms")
    data.add_argument("--phantom-seed-start", type=int, default=1000, help="seed of the first phantom")
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, help="run folder for last.pt, encoder.pt, log.jsonl")
    run.add_argument("--resume", type=Path, help="run folder (its last.pt) or checkpoint to continue")
    run.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    run.add_argument("--preset", choices=("tiny", "full"), help="network size (default tiny)")
    run.add_argument("--steps", type=int, help="optimizer steps in total (default 1000)")
    run.add_argument("--seed", type=int, help="seed of the weights, crops and masks (default 0)")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--patch-size", type=int, help="cubic crop side, multiple of 32 (default 96)")
    recipe.add_argument("--batch-size", type=int, help="crops per step (default 2)")
    recipe.add_argument("--lr", type=float, help="peak AdamW learning rate (default 5e-4)")
    recipe.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.04)")
    recipe.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 100)")
    recipe.add_argument("--mask-prob", type=float, help="chance a 16^3-voxel token is masked (default 0.6)")
    recipe.add_argument("--ema", type=float, help="teacher EMA momentum (default 0.996)")
    recipe.add_argument("--precision", choices=("fp32", "bf16"), help="fp32 (default) or bf16 autocast")
    recipe.add_argument("--log-interval", type=int, help="log a loss line every N steps (default 10)")
    recipe.add_argument("--checkpoint-interval", type=int, help="save every N steps (default 100)")


def _data_spec(args: argparse.Namespace) -> dict | None:
    named = [n for n in ("datalist", "images", "phantoms") if getattr(args, n)]
    if len(named) > 1:
        raise InvalidInputError(f"choose one data source, got {' and '.join(named)}")
    if not named:
        return None
    if args.datalist:
        return {"kind": "datalist", "path": str(args.datalist.resolve())}
    if args.images:
        return {"kind": "images", "path": str(args.images.resolve())}
    if args.phantoms < 1:
        raise InvalidInputError(f"--phantoms must be >= 1, got {args.phantoms}")
    return {"kind": "phantoms", "count": args.phantoms, "seed_start": args.phantom_seed_start}


def image_sources(spec: dict) -> list:
    """The image sources a data spec names (``ImageSource`` / ``PhantomCase``)."""
    from service.io.cases import case_name_for, find_cases
    from training.data import _relative_to, phantom_cases
    from training.pretrain import ImageSource

    if spec["kind"] == "phantoms":
        return phantom_cases(spec["count"], spec["seed_start"])
    if spec["kind"] == "images":
        found = [ImageSource(case_name_for(p), p) for p in find_cases(Path(spec["path"]))]
        if not found:
            raise InvalidInputError(f"no image volumes found in {spec['path']}")
        return found
    path = Path(spec["path"])
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read datalist {path}: {exc}") from None
    sources = []
    for key in ("training", "validation", "unlabelled", "unlabeled"):
        for index, entry in enumerate(data.get(key) or [] if isinstance(data, dict) else []):
            value = entry.get("image") if isinstance(entry, dict) else entry
            if not isinstance(value, str):
                raise InvalidInputError(f'datalist {path}: {key}[{index}] needs "image", got {entry!r}')
            image = _relative_to(path.parent, value)
            if not image.exists():
                raise InvalidInputError(f"datalist {path}: {key}[{index}] image {image} does not exist")
            sources.append(ImageSource(case_name_for(image), image))
    if not sources:
        raise InvalidInputError(f"datalist {path} names no images")
    return sources


def resolve_config(args: argparse.Namespace, saved: dict | None):
    from service.cli_flags import error_line
    from training.data import PreprocessParams
    from training.pretrain import PretrainConfig

    values = saved or PretrainConfig(preprocess=PreprocessParams.service_defaults()).to_dict()
    for name in CONFIG_OPTIONS:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    spec = _data_spec(args)
    if spec is not None:
        values["data"] = spec
    if not values.get("data"):
        raise InvalidInputError("no images: give --datalist, --images or --phantoms")
    try:
        return PretrainConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(error_line(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Entry point of ``swinxseg pretrain``; returns the exit code."""
    from training.checkpointing import load_training_state_file
    from training.cli import _StopFlag, _training_device
    from training.pretrain import LAST_NAME, PretrainTrainer, prepare_images

    device = _training_device(args.device)
    state = None
    if args.resume:
        path = args.resume / LAST_NAME if args.resume.is_dir() else args.resume
        state = load_training_state_file(path, required=("student", "teacher", "optimizer", "step", "rng", "config"))
    config = resolve_config(args, state["config"] if state else None)
    out_dir = args.out or (path.parent if state else None)
    if out_dir is None:
        raise InvalidInputError("--out is required for a new run")
    if state is None and (Path(out_dir) / LAST_NAME).is_file():
        raise InvalidInputError(f"{out_dir} already holds a run: continue it with --resume {out_dir}")
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    images = prepare_images(image_sources(config.data), config.preprocess)
    stop = _StopFlag()
    stop.install()
    trainer = PretrainTrainer(config, images, out_dir, resume_state=state, device=device)
    record = trainer.run(should_stop=stop)
    print(f"swinxseg pretrain: step {trainer.step}/{config.steps}"
          + (f", last total loss {record['total']:.4f}" if record else ""))
    print(f"  encoder checkpoint: {Path(out_dir) / 'encoder.pt'} (swinxseg train --init-from it)")
    return 0
