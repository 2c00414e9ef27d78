"""What the RoI layers share: their arguments, checked, and their CPU threads.

RoIPool (:mod:`~rcnn_steps.ops.roipool`), RoIAlign and RoIWarp
(:mod:`~rcnn_steps.ops.roialign`) take the same arguments as torchvision's layers and
check them here, the same way: each check names the function, the argument, what was
expected, what came in, and what to do about it.

Coordinates follow torchvision. ``boxes`` (:data:`Boxes`) are (x1, y1, x2, y2) in image
pixels, either a ``(K, 5)`` tensor whose first column is the image's index in the batch, or
a list with one ``(L_i, 4)`` tensor per image; ``spatial_scale`` (1 / stride) maps them onto
the feature map. Outputs live on the input's device, in its dtype; no gradient flows into
the boxes (as in torchvision).

On CPU the layers' feature work uses :data:`CPU_THREADS` threads (torch's setting by
default; its comment says when to lower it). The layers read it from this module at every
call, so set it here: ``rcnn_steps.ops.roi_checks.CPU_THREADS = 1``.

Plumbing for chapters 03 ("Fast R-CNN and RoIPool") and 06 ("RoIAlign"); nothing here is
taught on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from numbers import Integral, Real

import torch
from torch import Tensor

__all__ = ["CPU_THREADS", "MODES", "Boxes"]

#: Boxes as torchvision takes them: a (K, 5) tensor (batch index, x1, y1, x2, y2), or a
#: list with one (L_i, 4) tensor of (x1, y1, x2, y2) per image.
Boxes = Tensor | Sequence[Tensor]

#: The two ways RoIAlign and RoIWarp combine a bin's sampling points.
MODES = ("avg", "max")

#: How many CPU threads these layers' work on the features may use (None: torch's own
#: setting, the default). Each layer is a few dozen PyTorch ops that run on torch's thread
#: pool. On a quiet 2-core machine, 2 threads make RoIPool and RoIAlign about 1.5x faster
#: than 1 (benchmarks/bench_roi_ops.py --ours-threads 0 vs 1). On an oversubscribed
#: machine (several jobs sharing the cores) it is the other way round: each op may wait for
#: a scheduler time slice, ~8-12 ms, which made the layers 4-20x slower with 2 threads than
#: with 1 while this book was being written; set 1 there. ``torch.set_num_threads`` is
#: process-wide: while a layer runs with a limit, other Python threads' torch ops also see
#: the lower count.
CPU_THREADS: int | None = None


# ----------------------------------------------------------------------------------------
# Input checks. Each names the function, the argument, what was expected, what came in,
# and what to do about it.
# ----------------------------------------------------------------------------------------


def _check_input(fn: str, input: object) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(
            f"{fn}: input must be a torch.Tensor feature map of shape (N, C, H, W), got "
            f"{type(input).__name__}."
        )
    if input.dim() != 4:
        hint = (
            " A single image's (C, H, W) map needs a batch dimension: input[None]."
            if input.dim() == 3
            else ""
        )
        raise ValueError(
            f"{fn}: input must have shape (N, C, H, W), got {tuple(input.shape)}.{hint}"
        )
    if not input.is_floating_point():
        raise TypeError(
            f"{fn}: input must be a floating-point tensor, got dtype {input.dtype}; use "
            "input.float()."
        )
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(
            f"{fn}: the feature map has no cells (H x W = {input.shape[2]} x "
            f"{input.shape[3]}); there is nothing to pool from."
        )
    return input


def _pair(fn: str, output_size: object) -> tuple[int, int]:
    """``output_size`` as (height, width): an int n means (n, n), as in torchvision."""
    if isinstance(output_size, Integral) and not isinstance(output_size, bool):
        size = (int(output_size), int(output_size))
    elif (
        isinstance(output_size, Sequence)
        and len(output_size) == 2
        and all(isinstance(s, Integral) and not isinstance(s, bool) for s in output_size)
    ):
        size = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(
            f"{fn}: output_size must be an int or a (height, width) pair of ints, got "
            f"{output_size!r}; e.g. 7 or (7, 7) for box heads, 14 for mask heads."
        )
    if min(size) <= 0:
        raise ValueError(
            f"{fn}: output_size must be positive, got {size}; each RoI is cut into "
            "height x width bins."
        )
    return size


def _check_scale(fn: str, spatial_scale: object) -> float:
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, Real):
        raise TypeError(
            f"{fn}: spatial_scale must be a number (1 / the feature stride, e.g. 1 / 16), "
            f"got {spatial_scale!r}."
        )
    if not (math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(
            f"{fn}: spatial_scale must be a positive finite number (1 / the feature "
            f"stride, e.g. 1 / 16 = 0.0625), got {spatial_scale!r}."
        )
    return float(spatial_scale)


def _check_sampling_ratio(fn: str, sampling_ratio: object) -> int:
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, Integral):
        raise TypeError(
            f"{fn}: sampling_ratio must be an int (points per bin side; <= 0 for "
            f"adaptive), got {sampling_ratio!r}."
        )
    return int(sampling_ratio)


def _check_mode(fn: str, mode: object) -> str:
    if mode not in MODES:
        raise ValueError(
            f"{fn}: mode must be 'avg' (RoIAlign as published and in torchvision) or "
            f"'max' (the max over each bin's sampling points), got {mode!r}."
        )
    return str(mode)


def _rois_from_boxes(fn: str, boxes: object, input: Tensor) -> Tensor:
    """``boxes`` as one ``(K, 5)`` tensor in the input's dtype and device, checked.

    A list of per-image ``(L_i, 4)`` tensors becomes rows ``(i, x1, y1, x2, y2)``, as
    ``torchvision.ops._utils.convert_boxes_to_roi_format`` does. Coordinates are cast to
    the input's dtype (torchvision insists the two match; casting is what one would do
    anyway) and detached: like torchvision, these layers do not differentiate the boxes.
    """
    num_images = input.shape[0]
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            hint = (
                " These look like (x1, y1, x2, y2) boxes of one image: pass [boxes] (a "
                "list with one tensor per image) or prepend a column of batch indices."
                if boxes.dim() == 2 and boxes.shape[1] == 4
                else ""
            )
            raise ValueError(
                f"{fn}: a boxes tensor must have shape (K, 5) with rows (batch_index, x1, "
                f"y1, x2, y2), got {tuple(boxes.shape)}.{hint}"
            )
        rois = boxes
    elif isinstance(boxes, (list, tuple)):
        if len(boxes) > num_images:
            raise ValueError(
                f"{fn}: boxes is a list of {len(boxes)} tensors (one per image) but input "
                f"holds {num_images} image(s); give one (L, 4) tensor per image of the batch."
            )
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor):
                raise TypeError(
                    f"{fn}: boxes[{i}] must be a (L, 4) tensor, got {type(b).__name__}."
                )
            if b.dim() != 2 or b.shape[1] != 4:
                hint = (
                    " Rows of 5 already carry a batch index: pass that tensor itself, not a list."
                    if b.dim() == 2 and b.shape[1] == 5
                    else ""
                )
                raise ValueError(
                    f"{fn}: boxes[{i}] must have shape (L, 4) with rows (x1, y1, x2, y2), "
                    f"got {tuple(b.shape)}.{hint}"
                )
            if b.device != input.device:
                raise ValueError(
                    f"{fn}: boxes[{i}] is on {b.device} but input is on {input.device}; "
                    "move the boxes to the input's device."
                )
        if len(boxes) == 0:
            rois = input.new_zeros((0, 5))
        else:
            rois = torch.cat(
                [
                    torch.cat(
                        (torch.full_like(b[:, :1], i, dtype=input.dtype), b.to(input.dtype)), 1
                    )
                    for i, b in enumerate(boxes)
                ]
            )
    else:
        raise TypeError(
            f"{fn}: boxes must be a (K, 5) tensor or a list of (L, 4) tensors, got "
            f"{type(boxes).__name__}."
        )
    if rois.device != input.device:
        raise ValueError(
            f"{fn}: boxes are on {rois.device} but input is on {input.device}; move the "
            "boxes to the input's device."
        )
    if rois.is_complex() or rois.dtype == torch.bool:
        raise TypeError(f"{fn}: boxes must hold real numbers, got dtype {rois.dtype}.")
    rois = rois.detach().to(input.dtype)
    with _cpu_threads(rois.device, limit=1):
        _check_batch_and_coordinates(fn, rois, num_images)
    return rois


def _check_batch_and_coordinates(fn: str, rois: Tensor, num_images: int) -> None:
    if rois.shape[0] > 0:
        # One host synchronisation for all checks.
        batch = rois[:, 0]
        bad_index = (batch < 0) | (batch >= num_images) | (batch != batch.trunc())
        bad_coord = ~torch.isfinite(rois[:, 1:]).all(1)
        bad = torch.stack((bad_index.any(), bad_coord.any())).tolist()
        if bad[0]:
            first = batch[bad_index][0].item()
            raise ValueError(
                f"{fn}: batch index {first!r} in boxes[:, 0] is not an image of the batch; "
                f"indices must be integers in [0, {num_images - 1}] (input holds "
                f"{num_images} image(s))."
            )
        if bad[1]:
            raise ValueError(
                f"{fn}: boxes contain nan or inf coordinates; drop or clip those boxes "
                "first (e.g. rcnn_steps.ops.boxes.clip_boxes_to_image)."
            )


def _single_box(fn: str, box: object) -> Tensor:
    """One box (x1, y1, x2, y2) as a ``(1, 5)`` RoI row of image 0 (float32 unless given a
    float tensor, so it rounds the way a float32 model's boxes do)."""
    t = box if isinstance(box, Tensor) else torch.as_tensor(box, dtype=torch.float32)
    if t.shape != (4,):
        raise ValueError(
            f"{fn}: box must be four numbers (x1, y1, x2, y2), got shape {tuple(t.shape)}."
        )
    if not t.is_floating_point():
        t = t.float()
    return torch.cat((t.new_zeros(1), t.detach()))[None]


@contextmanager
def _cpu_threads(device: torch.device, limit: int | None = -1):
    """Run a block with at most ``limit`` intra-op threads on CPU (by default
    :data:`CPU_THREADS`; None: no limit). Elsewhere, and when torch is already at or
    below the limit, it changes nothing.

    The index arithmetic of every layer (boxes, bins, sampling points, weights: about
    K x bins x (H + points) numbers) always runs on one thread (``limit=1``): it is far
    too small to gain from more, and on a busy machine each of its ops would wait for a
    time slice (see :data:`CPU_THREADS`).
    """
    limit = CPU_THREADS if limit == -1 else limit
    threads = torch.get_num_threads()
    wanted = threads if limit is None else max(1, min(limit, threads))
    if device.type != "cpu" or wanted == threads:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
