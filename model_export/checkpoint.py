"""Safe checkpoint loading: weights only, never pickled code, and errors a person can act on.

Every failure (missing/empty/truncated file, text, a pickle that would run code, a zip that is not a
torch file, keys or shapes that do not fit the network) raises ``CheckpointError`` with one sentence.
"""

from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from service.errors import CheckpointError
from service.preprocess_spec import PreprocessSpec

log = logging.getLogger(__name__)

# The entry of a training checkpoint that records its preprocessing (a PreprocessSpec as a dict).
PREPROCESS_RECORD_KEY = "preprocess"
# Wrappers seen in the wild around the state_dict, in the order we look for them.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
DATA_PARALLEL_PREFIX = "module."
# How many key names an error message lists before it says "... and N more".
SHOWN_KEYS = 5

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # first byte of a binary pickle (legacy torch.save format)


def load_checkpoint(path: Path | str) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` state_dict (float16/bfloat16 -> float32).

    Accepts a bare state_dict or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``, with or
    without data-parallel ``module.`` prefixes. Always ``torch.load(..., weights_only=True)``.
    """
    return load_checkpoint_and_record(path)[0]


def load_checkpoint_and_record(path: Path | str) -> tuple[dict[str, Tensor], PreprocessSpec | None]:
    """``load_checkpoint``'s state_dict, and the checkpoint's preprocessing record.

    The record is the ``"preprocess"`` entry ``swinxseg train`` writes (a ``PreprocessSpec``);
    ``None`` when the file has none, as in the authors' published format. Raises
    ``CheckpointError`` for an unreadable file or a record that is not a valid ``PreprocessSpec``.
    """
    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; the error below says it better.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        OSError,
        zipfile.BadZipFile,
        KeyError,
        IndexError,
    ) as exc:
        # weights_only refusals arrive as UnpicklingError or RuntimeError depending on the torch version.
        raise CheckpointError(_unpickling_reason(path, exc)) from None
    state = _unwrap(obj, path)
    return _normalise(state, path), _preprocess_record(obj, path)


def _preprocess_record(obj: object, path: Path) -> PreprocessSpec | None:
    record = obj.get(PREPROCESS_RECORD_KEY) if isinstance(obj, Mapping) else None
    if record is None:
        return None
    try:
        return PreprocessSpec.model_validate(dict(record))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its {PREPROCESS_RECORD_KEY!r} record is not valid: {_first_line(exc)}") from None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if head.startswith(_ZIP_MAGIC):
        _check_zip(path)
    elif head[0] != _PICKLE_PROTO:
        kind = "a text file" if _looks_like_text(path) else "neither a zip archive nor a pickle"
        raise CheckpointError(f"{path} is {kind}, not a PyTorch checkpoint saved with torch.save")


def _check_zip(path: Path) -> None:
    """A torch.save zip holds ``<archive>/data.pkl``; say so plainly for truncated or foreign zips."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path} is a truncated or corrupt zip archive, not a complete checkpoint"
        ) from None
    if not any(name.endswith("data.pkl") for name in names):
        raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)")


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as handle:
        sample = handle.read(512)
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _unpickling_reason(path: Path, exc: Exception) -> str:
    detail = _weights_only_detail(str(exc))
    if detail is None:
        return f"{path} is not a readable PyTorch checkpoint ({_first_line(exc)})"
    return (
        f"{path} was refused by the safe loader (weights_only=True, nothing was executed): it holds "
        f"pickled objects or code, not only tensors, or it is truncated ({detail})"
    )


def _weights_only_detail(text: str) -> str | None:
    """The informative line of torch's weights_only refusal, or None if ``text`` is not one."""
    if not text.startswith("Weights only load failed"):
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            detail = rest or (lines[i + 1] if i + 1 < len(lines) else "")
            return detail.split(" was not an allowed global")[0]
        if "GLOBAL" in line or "Unsupported" in line:
            return line
    return "unsupported pickle content"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _unwrap(obj: object, path: Path) -> Mapping[str, object]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict mapping")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            log.debug("using the %r entry of %s", key, path)
            return inner
    if not obj:
        raise CheckpointError(f"{path} holds an empty dictionary, not a state_dict")
    if not any(isinstance(v, Tensor) for v in obj.values()):
        top = ", ".join(sorted(str(k) for k in obj)[:SHOWN_KEYS])
        raise CheckpointError(f"{path} has no state_dict: its top-level keys are {top}")
    return obj


def _normalise(state: Mapping[str, object], path: Path) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for raw_key, value in state.items():
        key = str(raw_key)
        while key.startswith(DATA_PARALLEL_PREFIX):
            key = key[len(DATA_PARALLEL_PREFIX) :]
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: entry {raw_key!r} is a {type(value).__name__}, not a tensor")
        if key in out:
            raise CheckpointError(f"{path}: key {key!r} appears both with and without the 'module.' prefix")
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {key!r} contains NaN or infinite values")
        out[key] = value
    return out


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load ``state_dict`` strictly into ``model``; on any mismatch raise one ``CheckpointError``.

    The message names the missing, unexpected and wrong-shape keys (the first few of each, with counts).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} (checkpoint {list(state_dict[k].shape)}, model {list(expected[k].shape)})"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    problems = [
        _describe(missing, "missing key"),
        _describe(unexpected, "unexpected key"),
        _describe(wrong_shape, "wrong-shape key"),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit {type(model).__name__} ({len(expected)} keys expected): "
            + "; ".join(problems)
        )
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied; shapes were checked above
        raise CheckpointError(f"checkpoint could not be loaded: {_first_line(exc)}") from None
    return model


def _describe(items: list[str], what: str) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:SHOWN_KEYS])
    more = f" and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
    plural = "s" if len(items) != 1 else ""
    return f"{len(items)} {what}{plural} ({shown}{more})"
