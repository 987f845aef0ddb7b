"""Training arithmetic: float32, or bfloat16 autocast with a check of the convolution kernels.

Why the check: oneDNN's bfloat16 weight gradient of a 3x3x3 convolution is wrong on some CPUs
and PyTorch builds for some input shapes. With PyTorch 2.13 (CPU build, AVX512-BF16) every input
whose depth is 2 voxels came back off by a factor of up to 1e36 (occasionally NaN), while the
forward pass and the input gradient were right. In Swin-X Seg that depth occurs at the deepest
levels of a 32^3 or 64^3 patch, so those layers trained on garbage without any error, or the run
died on a NaN loss a few hundred steps in. Which shapes fail depends on the device and the build,
so rather than a list of known-bad shapes, the trainer measures on the device it trains on:
before the first step it replays every convolution signature of the network in bfloat16 and in
float32 and keeps the ones whose bfloat16 gradients disagree in float32 for the whole run (cheap:
they are the small, deep layers).
"""

from __future__ import annotations

import copy
import functools
import logging

import torch

log = logging.getLogger(__name__)

# Forward-pass arithmetic while training (validation and export stay float32).
PRECISIONS = ("fp32", "bf16")
CONVOLUTIONS = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)
# bfloat16 keeps 8 bits of mantissa: a correct kernel lands within ~1 % of float32 (measured
# 0.1-0.8 %); the failures seen are off by orders of magnitude.
GRADIENT_TOLERANCE = 0.05
# Spatial sizes up to this are replayed exactly; larger ones are replayed at this size, which
# keeps the check to seconds at 96^3 while every small (deep-level) shape is tested as it is.
MAX_CHECKED_SIZE = 16
# Each signature is replayed with these input seeds: a kernel that reads stale memory may be wrong
# only some of the time (the NaNs seen came and went from one call to the next).
REPLAYS = (0, 1)


def autocast(precision: str, device_type: str = "cpu"):
    """The context a training forward pass runs in, on a ``device_type`` ("cpu" or "cuda") model."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def convolution_inputs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> dict[str, torch.Size]:
    """Input shape of every convolution in one forward pass of a zero tensor of ``input_shape``.

    Runs in eval mode without gradients, so batch-norm statistics and random generators are not
    touched (an exactly resumed run must not notice the check).
    """
    shapes: dict[str, torch.Size] = {}

    def recorder(name: str):
        def record(module, args, output) -> None:  # returns None: the output is left alone
            shapes.setdefault(name, args[0].shape)

        return record

    handles = [
        module.register_forward_hook(recorder(name))
        for name, module in model.named_modules()
        if isinstance(module, CONVOLUTIONS)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape, device=_device_of(model)))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def bf16_gradient_error(convolution: torch.nn.Module, input_shape: torch.Size, seed: int = 0) -> float:
    """Largest relative error of a convolution's bfloat16 gradients (weight and input) vs float32.

    Inputs and weights are rounded to bfloat16 first, so the float32 reference sees the same
    numbers and only the kernel's own arithmetic is measured. NaN or inf counts as infinite.
    """
    probe = copy.deepcopy(convolution).float()
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.copy_(parameter.bfloat16().float())
    device = _device_of(probe)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape, generator=generator).bfloat16().float().to(device)
    results = []
    for low_precision in (False, True):
        probe.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low_precision):
            out = probe(inputs)
        out.float().sum().backward()
        results.append([inputs.grad] + [p.grad for p in probe.parameters()])
    worst = 0.0
    for reference, candidate in zip(*results, strict=True):
        if not torch.isfinite(candidate).all():
            return float("inf")
        scale = float(reference.abs().max())
        if scale > 0:
            worst = max(worst, float((candidate - reference).abs().max()) / scale)
    return worst


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _signature(module: torch.nn.Module, shape: torch.Size) -> tuple:
    checked = tuple(shape[:2]) + tuple(min(int(s), MAX_CHECKED_SIZE) for s in shape[2:])
    return (
        type(module).__name__,
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        module.groups,
        module.bias is not None,
        checked,
    )


def unreliable_bf16_convolutions(
    model: torch.nn.Module, input_shape: tuple[int, ...], tolerance: float = GRADIENT_TOLERANCE
) -> dict[str, float]:
    """Convolutions whose bfloat16 gradients miss float32 by more than ``tolerance`` -> error.

    Each distinct (layer settings, input shape) signature is replayed ``len(REPLAYS)`` times.
    """
    modules = dict(model.named_modules())
    errors: dict[tuple, float] = {}
    unreliable: dict[str, float] = {}
    for name, shape in convolution_inputs(model, input_shape).items():
        signature = _signature(modules[name], shape)
        if signature not in errors:
            checked_shape = torch.Size(signature[-1])
            errors[signature] = max(
                bf16_gradient_error(modules[name], checked_shape, seed) for seed in REPLAYS
            )
        if errors[signature] > tolerance:
            unreliable[name] = errors[signature]
    return unreliable


class _Float32Forward:
    """Runs the convolution in float32 inside autocast regions (mixed into the layer's class)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float(), *args, **kwargs)


@functools.cache
def _float32_class(layer_class: type) -> type:
    return type(f"Float32{layer_class.__name__}", (_Float32Forward, layer_class), {})


def keep_in_float32(module: torch.nn.Module) -> None:
    """Run ``module`` in float32 inside autocast regions.

    The layer's class is swapped for its float32 subclass, which keeps its parameters, its
    state_dict keys and ``isinstance`` checks, and survives ``copy.deepcopy``.
    """
    if not isinstance(module, _Float32Forward):
        module.__class__ = _float32_class(type(module))


def guard_bf16_convolutions(model: torch.nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Check every convolution signature; keep the unreliable ones in float32. Returns their names."""
    unreliable = unreliable_bf16_convolutions(model, input_shape)
    modules = dict(model.named_modules())
    for name in unreliable:
        keep_in_float32(modules[name])
    if unreliable:
        log.warning(
            "bfloat16 gradients of %d convolution(s) disagree with float32 on this device (worst "
            "relative error %.3g): running %s in float32",
            len(unreliable),
            max(unreliable.values()),
            ", ".join(sorted(unreliable)),
        )
    else:
        log.info("bfloat16 gradients of every convolution agree with float32 on this device")
    return sorted(unreliable)

