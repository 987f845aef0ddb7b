"""Bounded-memory sliding-window inference: stream the windows along one axis, stitch in a slab.

Why a slab
----------
MONAI's ``sliding_window_inference`` (and the seed pipeline) keeps a ``(C, X, Y, Z)`` sum and a
weight map for the whole volume: 2 x 15 x voxels x 4 bytes, i.e. ~15 GB for a 512x512x500 scan.
That is why the authors stitched on the host, and why long scans run out of memory.

But a window only touches ``Rz`` consecutive slices. If the windows are visited in ascending
order of their z start ``s``, then once the first window with start ``s`` arrives no later
window can touch any ``z < s``: those slices are final. So the device only needs the slices
``[lo, lo + Rz)`` that are still open:

- a score accumulator ``(C, X, Y, Rz)`` and a weight accumulator ``(X, Y, Rz)`` (the gaussian
  is the same for every channel, so one channel of weights is enough);
- before adding the windows of z start ``s > lo``: finalise ``[lo, s)`` (argmax over C, copy
  the uint8 labels to the host output), then shift the open part ``[s, lo + Rz)`` to the front of
  the buffers with a few non-overlapping copies (no ``torch.roll``, no reallocation) and zero
  the freed tail; ``lo = s``;
- after the last window: finalise what is left.

Device memory is therefore ``(C + 1) * X * Y * Rz * itemsize``, independent of the scan's
length Z: the axis along which CT scans get long is Z (superior-inferior after RAS
reorientation), while X and Y are bounded by the field of view.

The same argument holds for any axis, so the streamed axis is the one whose slab is smallest,
i.e. the longest one (``stream_axis``): Z for a long scan, but X for a short, wide one, where a
Z slab would span the whole volume (example_ct_sm's 361 x 286 x 88 crop needs a 277 MB float16
slab along Z, 74 MB along X). The volume is only viewed in that axis order; each window batch
is put back into (X, Y, Z) order for the network and its logits viewed in slab order, so the
windows, weights and labels are the same as along Z, up to the order of float additions.

Labels need no division: the weight of a voxel is the same positive number for all channels,
so ``argmax(sum / weight) == argmax(sum)``; voxels with weight 0 (only covered by skipped
windows) are labelled background (0).

Other details
-------------
- Axes shorter than the ROI: the *window* is padded with zeros (0 is air after intensity
  scaling) on both sides, the smaller half first, and the prediction cropped back; the volume
  itself is never padded. That is where MONAI's ``SpatialPad`` and ``sliding_window_inference``
  put a short axis, and the network's output depends on where in the window the anatomy sits.
- Windows are run ``sw_batch_size`` at a time. Windows whose region does not touch the body
  (``body.touches(start, stop)``) are skipped: they add zero weight.
- Out of memory: only ``torch.cuda.OutOfMemoryError`` is caught (a warning says so). The batch
  is halved and retried; at batch size 1 ``StitchOutOfMemory`` is raised so the caller can retry
  with ``accumulate_device="cpu"``: windows still run on the predictor's device, the slab buffers
  then live on the host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch

from service.errors import CaseCancelledError, InferenceError
from service.inference.predictors import Predictor
from service.inference.windows import Triple, gaussian_importance, window_grid
from service.preprocess_spec import PAPER_ROI_SIZE

logger = logging.getLogger(__name__)

Window = tuple[Triple, Triple]  # (start, stop) in volume indices, stop clipped to the volume

# Slices finalised per step: bounds the int64 argmax temporary to X*Y*8*8 bytes.
_FINALIZE_CHUNK = 8


class BodyRegion(Protocol):
    def touches(self, start: Triple, stop: Triple) -> bool:
        """Whether the box ``[start, stop)`` (volume indices) contains any body voxel."""
        ...


class StitchOutOfMemory(InferenceError):
    """The device ran out of memory even at ``sw_batch_size == 1``; retry stitching on the host."""

    code = "stitch_out_of_memory"

    def __init__(self, message: str, *, fallbacks: list[str] | None = None) -> None:
        super().__init__(message)
        self.fallbacks = list(fallbacks or [])


@dataclass
class StitchResult:
    """``labels`` (X, Y, Z) uint8, or ``scores`` (C, X, Y, Z) float32 when ``output="scores"``."""

    labels: np.ndarray | None
    scores: np.ndarray | None
    windows_run: int
    windows_skipped: int
    stitch_buffer_bytes: int  # score + weight slab, on the accumulate device
    sw_batch_size_used: int
    stream_axis: int = 2  # 0, 1, 2 = X, Y, Z: the axis the slab moved along
    accumulate_device: str = "cpu"
    fallbacks: list[str] = field(default_factory=list)


class _Slab:
    """Open slices ``[lo, lo + depth)`` of the score sum (C, X, Y, depth) and weights (X, Y, depth)."""

    def __init__(self, channels: int, shape: Triple, depth: int, *, device: torch.device, dtype: torch.dtype):
        self.scores = torch.zeros((channels, shape[0], shape[1], depth), dtype=dtype, device=device)
        self.weight = torch.zeros((shape[0], shape[1], depth), dtype=dtype, device=device)
        self.depth = depth
        self.lo = 0

    @property
    def nbytes(self) -> int:
        return self.scores.nbytes + self.weight.nbytes

    def add(self, logits: torch.Tensor, importance: torch.Tensor, start: Triple, stop: Triple) -> None:
        """Add ``logits`` (C, wx, wy, wz) weighted by ``importance`` (wx, wy, wz) at [start, stop)."""
        z0, z1 = start[2] - self.lo, stop[2] - self.lo
        if z0 < 0 or z1 > self.depth:
            raise InferenceError(
                f"window z [{start[2]}, {stop[2]}) outside the open slab [{self.lo}, "
                f"{self.lo + self.depth}): windows must arrive in ascending z order"
            )
        region = (slice(start[0], stop[0]), slice(start[1], stop[1]), slice(z0, z1))
        self.scores[(slice(None), *region)].addcmul_(logits, importance)
        self.weight[region].add_(importance)

    def release(self) -> None:
        """Free the buffers now (the caller may retry on the host while this object is still referenced)."""
        on_cuda = self.scores.is_cuda
        self.scores = self.weight = torch.empty(0)
        if on_cuda:
            torch.cuda.empty_cache()

    def advance(self, new_lo: int) -> None:
        """Drop ``[lo, new_lo)`` (already finalised) and move the open slices to the front."""
        shift = new_lo - self.lo
        keep = max(self.depth - shift, 0)
        # Copy forward in chunks of ``shift`` slices: each chunk's source lies beyond its
        # destination and is read before a later chunk overwrites it, so no temporary is needed.
        for dst in range(0, keep, shift):
            n = min(shift, keep - dst)
            src = dst + shift
            self.scores[..., dst : dst + n].copy_(self.scores[..., src : src + n])
            self.weight[..., dst : dst + n].copy_(self.weight[..., src : src + n])
        self.scores[..., keep:].zero_()
        self.weight[..., keep:].zero_()
        self.lo = new_lo


class _LabelSink:
    """Host (X, Y, Z) uint8 labels, written slab by slab."""

    def __init__(self, shape: Triple, channels: int):
        self.array = np.zeros(shape, dtype=np.uint8)

    def write(self, slab: _Slab, a: int, b: int) -> None:
        scores, weight = slab.scores[..., a:b], slab.weight[..., a:b]
        # max(dim).indices == argmax (first maximum on ties) and is ~2x faster on the CPU here.
        labels = scores.max(dim=0).indices.to(torch.uint8)
        labels.masked_fill_(weight == 0, 0)
        self.array[:, :, slab.lo + a : slab.lo + b] = labels.cpu().numpy()


class _ScoreSink:
    """Host (C, X, Y, Z) float32 blended scores (for tests and debugging)."""

    def __init__(self, shape: Triple, channels: int):
        self.array = np.zeros((channels, *shape), dtype=np.float32)

    def write(self, slab: _Slab, a: int, b: int) -> None:
        scores, weight = slab.scores[..., a:b].float(), slab.weight[..., a:b].float()
        blended = torch.where(weight > 0, scores / weight.clamp_min(1e-12), torch.zeros_like(scores))
        self.array[:, :, :, slab.lo + a : slab.lo + b] = blended.cpu().numpy()


class _Runner:
    """State of one stitching run: the slab, the sink, the batch size and the counters."""

    def __init__(
        self,
        image: torch.Tensor,
        predictor: Predictor,
        *,
        roi: Triple,
        importance: torch.Tensor,
        slab: _Slab,
        sink: _LabelSink | _ScoreSink,
        batch_size: int,
        on_slab: Callable[[int, int], None] | None,
        should_stop: Callable[[], bool] | None = None,
        on_windows: Callable[[int, int], None] | None = None,
    ) -> None:
        self.image, self.predictor, self.roi = image, predictor, roi
        self.should_stop = should_stop
        self.on_windows = on_windows
        self.importance, self.slab, self.sink = importance, slab, sink
        self.batch_size = batch_size
        self.on_slab = on_slab
        self.windows_run = 0
        self.fallbacks: list[str] = []

    def run(self, windows: Sequence[Window]) -> None:
        i = 0
        self._report(0, len(windows))
        while i < len(windows):
            if self.should_stop is not None and self.should_stop():
                # Between window batches: nothing half-blended is kept, the caller frees the slot.
                raise CaseCancelledError(f"cancelled after {self.windows_run} of {len(windows)} windows")
            chunk = windows[i : i + self.batch_size]
            oom = False
            try:
                logits = self._forward(chunk)
            except torch.cuda.OutOfMemoryError:
                oom = True  # handled outside the except block so the failed tensors are freed first
            if oom:
                self._shrink_batch()
                continue
            self._accumulate(chunk, logits)
            del logits
            self.windows_run += len(chunk)
            i += len(chunk)
            self._report(i, len(windows))
        self.finalize(self.slab.lo + self.slab.depth)

    def _report(self, done: int, total: int) -> None:
        # Alongside the cancel poll: once per window batch, never inside a forward pass.
        if self.on_windows is not None:
            self.on_windows(done, total)

    def _forward(self, chunk: Sequence[Window]) -> torch.Tensor:
        """Windows -> logits (B, C, Rx, Ry, Rz) on the predictor's device."""
        batch = torch.zeros((len(chunk), 1, *self.roi), dtype=torch.float32, device=self.predictor.device)
        for b, (start, stop) in enumerate(chunk):
            inside = self._inside_window(start, stop)
            batch[(b, 0, *inside)].copy_(
                self.image[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
            )
        logits = self.predictor(batch)
        expected = (len(chunk), self.slab.scores.shape[0], *self.roi)
        if tuple(logits.shape) != expected:
            raise InferenceError(
                f"predictor {self.predictor.name} returned {tuple(logits.shape)}, expected {expected}"
            )
        return logits

    def _inside_window(self, start: Triple, stop: Triple) -> tuple[slice, slice, slice]:
        """Where the volume's part ``[start, stop)`` sits inside the ROI-sized window.

        Only an axis shorter than the ROI gives a part smaller than the window (the grid keeps
        every window inside the volume otherwise); it is centred, the odd voxel of padding last.
        """
        parts = []
        for s, e, r in zip(start, stop, self.roi, strict=True):
            offset = (r - (e - s)) // 2
            parts.append(slice(offset, offset + e - s))
        return tuple(parts)  # type: ignore[return-value]

    def _shrink_batch(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the failed batch's blocks back before retrying
        if self.batch_size == 1:
            self.fallbacks.append("oom: still out of memory at sw_batch_size 1")
            raise StitchOutOfMemory(
                "CUDA out of memory at sw_batch_size 1; retry with the accumulator on the host",
                fallbacks=self.fallbacks,
            )
        new_size = self.batch_size // 2
        logger.warning(
            "torch.cuda.OutOfMemoryError at sw_batch_size %d: retrying with %d", self.batch_size, new_size
        )
        self.fallbacks.append(f"oom: sw_batch_size {self.batch_size} -> {new_size}")
        self.batch_size = new_size

    def _accumulate(self, chunk: Sequence[Window], logits: torch.Tensor) -> None:
        slab = self.slab
        try:
            for b, (start, stop) in enumerate(chunk):
                self._add_window(logits[b], start, stop)
            return
        except torch.cuda.OutOfMemoryError:
            pass  # raised below, outside the handler, so no traceback pins device memory
        logger.warning("torch.cuda.OutOfMemoryError while stitching on %s", slab.scores.device)
        self.fallbacks.append(f"oom: stitching on {slab.scores.device} failed")
        raise StitchOutOfMemory(
            f"CUDA out of memory while stitching on {slab.scores.device}", fallbacks=self.fallbacks
        )

    def _add_window(self, logits: torch.Tensor, start: Triple, stop: Triple) -> None:
        """Blend one window's logits (C, Rx, Ry, Rz) into the slab, finalising slices it passed."""
        slab = self.slab
        if start[2] > slab.lo:
            self.finalize(start[2])
            slab.advance(start[2])
        crop = self._inside_window(start, stop)
        # Move first, weight second: with a host accumulator the multiply happens on the host and
        # the device holds nothing extra.
        window_logits = logits[(slice(None), *crop)].to(slab.scores.device, slab.scores.dtype)
        slab.add(window_logits, self.importance[crop], start, stop)

    def finalize(self, z_stop: int) -> None:
        """Write ``[lo, min(z_stop, lo + depth))`` to the host; slices beyond were never touched."""
        slab = self.slab
        n = min(z_stop, slab.lo + slab.depth) - slab.lo
        for a in range(0, n, _FINALIZE_CHUNK):
            self.sink.write(slab, a, min(a + _FINALIZE_CHUNK, n))
        if n > 0 and self.on_slab is not None:
            self.on_slab(slab.lo, slab.lo + n)


def _validate(image: torch.Tensor, roi: Sequence[int], sw_batch_size: int, output: str, channels: int) -> Triple:
    if output == "labels" and channels > 256:
        raise ValueError(f"uint8 labels hold at most 256 classes, the predictor has {channels}")
    if image.ndim != 3:
        raise ValueError(f"image must be (X, Y, Z), got shape {tuple(image.shape)}")
    if len(roi) != 3 or any(int(r) < 1 for r in roi):
        raise ValueError(f"roi must be three positive sizes, got {tuple(roi)}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    if output not in ("labels", "scores"):
        raise ValueError(f"output must be 'labels' or 'scores', got {output!r}")
    return (int(roi[0]), int(roi[1]), int(roi[2]))


def _split_by_body(windows: list[Window], body: BodyRegion | None) -> tuple[list[Window], int]:
    if body is None:
        return windows, 0
    kept = [w for w in windows if body.touches(w[0], w[1])]
    return kept, len(windows) - len(kept)


def _allocate_slab(
    channels: int, shape: Triple, depth: int, device: torch.device, dtype: torch.dtype
) -> _Slab:
    try:
        return _Slab(channels, shape, depth, device=device, dtype=dtype)
    except torch.cuda.OutOfMemoryError:
        pass  # raised below, outside the handler, so no traceback pins device memory
    logger.warning("torch.cuda.OutOfMemoryError allocating the stitch slab on %s", device)
    raise StitchOutOfMemory(
        f"CUDA out of memory allocating the ({channels}, {shape[0]}, {shape[1]}, {depth}) stitch slab on {device}",
        fallbacks=[f"oom: slab allocation on {device} failed"],
    )


def _run_or_release(runner: _Runner, windows: Sequence[Window]) -> None:
    """``runner.run``; on ``StitchOutOfMemory`` free the slab before the error reaches the caller."""
    failure = None
    try:
        runner.run(windows)
    except StitchOutOfMemory as exc:
        failure = exc
    if failure is not None:
        # Free the device slab and drop the traceback (its frames hold the last logits), so the
        # caller's retry with a host accumulator starts with this attempt's device memory back.
        logger.warning(
            "stitching out of memory with a %.1f MB slab on %s",
            runner.slab.nbytes / 2**20,
            runner.slab.scores.device,
        )
        runner.slab.release()
        raise failure.with_traceback(None)


def stream_axis(shape: Sequence[int], roi: Sequence[int]) -> int:
    """The axis whose slab ``(other two extents) x min(ROI, extent)`` is smallest; ties go to Z, then X."""

    def slab_voxels(axis: int) -> int:
        others = [int(n) for a, n in enumerate(shape) if a != axis]
        return others[0] * others[1] * min(int(roi[axis]), int(shape[axis]))

    return min((2, 0, 1), key=slab_voxels)


def _axis_order(axis: int) -> tuple[int, int, int]:
    """Permutation of (X, Y, Z) that puts ``axis`` last and keeps the other two in order."""
    return (*(a for a in range(3) if a != axis), axis)  # type: ignore[return-value]


def _permute_triple(values: Sequence[int], order: Sequence[int]) -> Triple:
    return (int(values[order[0]]), int(values[order[1]]), int(values[order[2]]))


class _ReorderedPredictor:
    """A predictor seen in slab axis order: batches go back to (X, Y, Z) for the network, and its
    logits come back as a view in slab order (no copy of the 15-channel output)."""

    def __init__(self, predictor: Predictor, order: Triple, inverse: Triple) -> None:
        self.inner = predictor
        self.out_channels, self.device, self.name = predictor.out_channels, predictor.device, predictor.name
        self.to_xyz = (0, 1, *(2 + a for a in inverse))
        self.to_slab = (0, 1, *(2 + a for a in order))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.inner(batch.permute(self.to_xyz).contiguous())
        return logits.permute(self.to_slab)


class _ReorderedBody:
    """``body.touches`` for boxes given in slab axis order."""

    def __init__(self, body: BodyRegion, inverse: Triple) -> None:
        self.body, self.inverse = body, inverse

    def touches(self, start: Triple, stop: Triple) -> bool:
        return self.body.touches(_permute_triple(start, self.inverse), _permute_triple(stop, self.inverse))


def sliding_window_labels(
    image: torch.Tensor,
    predictor: Predictor,
    *,
    roi: Sequence[int] = PAPER_ROI_SIZE,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    sigma_scale: float = 0.125,
    accumulate_dtype: torch.dtype = torch.float32,
    accumulate_device: torch.device | str | None = None,
    body: BodyRegion | None = None,
    output: Literal["labels", "scores"] = "labels",
    on_slab: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_windows: Callable[[int, int], None] | None = None,
) -> StitchResult:
    """Gaussian-blended sliding-window inference over ``image``, streamed along ``stream_axis``.

    Args:
        image: (X, Y, Z) float tensor (scaled intensities), on any device; windows are copied
            to ``predictor.device``.
        predictor: maps (B, 1, Rx, Ry, Rz) float32 to (B, C, Rx, Ry, Rz) logits.
        roi: window size (Rx, Ry, Rz); axes of the image shorter than it are padded per window.
        overlap: fraction of the ROI shared by neighbouring windows, in [0, 1).
        sw_batch_size: windows per predictor call (halved on CUDA out-of-memory).
        sigma_scale: gaussian sigma as a fraction of the ROI.
        accumulate_dtype: dtype of the slab buffers (float16 is fine on CUDA).
        accumulate_device: where the slab buffers live; default the predictor's device.
        body: optional ``touches(start, stop) -> bool``; windows not touching it are skipped.
        output: ``"labels"`` -> (X, Y, Z) uint8 argmax; ``"scores"`` -> (C, X, Y, Z) float32
            blended logits (memory heavy on the host; for tests).
        on_slab: called as ``on_slab(start, stop)`` after each finalised slab reaches the host;
            indices along the streamed axis (``StitchResult.stream_axis``).
        should_stop: polled before each window batch; when it returns True the run stops.
        on_windows: called as ``on_windows(done, total)`` before the first window batch (0) and
            after each one: windows run so far of the windows to run (skipped ones not counted).

    Raises:
        StitchOutOfMemory: CUDA ran out of memory at batch size 1 or while stitching.
        CaseCancelledError: ``should_stop()`` returned True.
    """
    image = torch.from_numpy(image) if isinstance(image, np.ndarray) else image
    channels = int(predictor.out_channels)
    roi_t = _validate(image, roi, sw_batch_size, output, channels)
    shape: Triple = tuple(int(s) for s in image.shape)  # type: ignore[assignment]
    acc_device = torch.device(accumulate_device) if accumulate_device is not None else predictor.device

    axis = stream_axis(shape, roi_t)
    image, predictor, body, shape, roi_t, inverse = _in_slab_order(image, predictor, body, shape, roi_t, axis)

    windows, skipped = _split_by_body(window_grid(shape, roi_t, overlap), body)
    slab = _allocate_slab(channels, shape, min(roi_t[2], shape[2]), acc_device, accumulate_dtype)
    sink = (_LabelSink if output == "labels" else _ScoreSink)(shape, channels)
    importance = gaussian_importance(roi_t, sigma_scale, device=acc_device, dtype=accumulate_dtype)
    runner = _Runner(image, predictor, roi=roi_t, importance=importance, slab=slab, sink=sink,
                     batch_size=sw_batch_size, on_slab=on_slab, should_stop=should_stop, on_windows=on_windows)
    _run_or_release(runner, windows)
    logger.debug("stitched %s along axis %d: %d windows run, %d skipped, slab %.1f MB on %s",
                 shape, axis, runner.windows_run, skipped, slab.nbytes / 2**20, acc_device)
    return _stitch_result(sink, inverse, runner, skipped=skipped, slab=slab, acc_device=acc_device, axis=axis)


def _in_slab_order(image: torch.Tensor, predictor: Predictor, body: BodyRegion | None, shape: Triple,
                   roi: Triple, axis: int):
    """Views of the inputs with the streamed ``axis`` last, and the permutation that undoes it."""
    order = _axis_order(axis)
    inverse: Triple = tuple(int(i) for i in np.argsort(order))  # type: ignore[assignment]
    if axis == 2:
        return image, predictor, body, shape, roi, inverse
    return (
        image.permute(order),
        _ReorderedPredictor(predictor, order, inverse),
        None if body is None else _ReorderedBody(body, inverse),
        _permute_triple(shape, order),
        _permute_triple(roi, order),
        inverse,
    )


def _stitch_result(sink, inverse: Triple, runner: _Runner, *, skipped: int, slab: torch.Tensor,
                   acc_device: torch.device, axis: int) -> StitchResult:
    """The sink's output back in the image's own axis order, with what the run cost."""
    if isinstance(sink, _LabelSink):
        labels, scores = np.ascontiguousarray(sink.array.transpose(inverse)), None
    else:
        labels, scores = None, np.ascontiguousarray(sink.array.transpose((0, *(1 + i for i in inverse))))
    return StitchResult(
        labels=labels,
        scores=scores,
        windows_run=runner.windows_run,
        windows_skipped=skipped,
        stitch_buffer_bytes=slab.nbytes,
        sw_batch_size_used=runner.batch_size,
        accumulate_device=str(acc_device),
        fallbacks=runner.fallbacks,
        stream_axis=axis,
    )
