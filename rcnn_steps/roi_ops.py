"""RoI operations: RoIPool, RoIAlign, RoIWarp, and a one-field switch between them.

A two-stage detector computes one feature map per image and then needs a fixed-size
feature (say 7 x 7) for every region of interest (RoI), whatever its size. The three
layers here differ only in how they read the map inside a box:

- :func:`roi_pool` (Fast R-CNN section 2.1) rounds the box to feature cells, cuts it into
  a ``ph x pw`` grid of integer-cell bins and max-pools each bin. It quantises twice
  (image to cells, cells to bins), so boxes that differ by most of a cell pool the same
  cells: at stride 16, x = 1.1 px and x = 2.2 px both round to cell 0 (:func:`roi_pool_cells`).
- :func:`roi_align` (Mask R-CNN section 3) removes both quantisations: each bin is sampled
  at ``n x n`` regular points at their exact, fractional positions, each point is read by
  bilinear interpolation (:func:`roi_align_sampling_points`), and the points are averaged
  (or max-pooled: ``mode="max"``, the "RoIAlign max" row of Mask R-CNN Table 2(c)).
- :func:`roi_warp` (Mask R-CNN Table 2(c), after Dai et al.'s MNC) is in between: it
  rounds the box like RoIPool but then samples it bilinearly like RoIAlign, so comparing
  it with RoIAlign isolates what the first quantisation costs.

:func:`get_roi_op` turns the five rows of Table 2(c) ("roipool", "roiwarp_max",
"roiwarp_avg", "roialign_max", "roialign_avg") into callables with one signature, so a
model's RoI layer is a single config field.

What is taught where: chapter 03 ("Fast R-CNN and RoIPool"): :func:`roi_pool_reference`,
:func:`roi_pool` and :func:`roi_pool_cells`; chapter 06 ("RoIAlign"): the rest.

Coordinates follow torchvision. ``boxes`` are (x1, y1, x2, y2) in image pixels, either a
``(K, 5)`` tensor whose first column is the image's index in the batch, or a list with
one ``(L_i, 4)`` tensor per image; ``spatial_scale`` (1 / stride) maps them onto the
feature map. RoIPool treats ``round(x * spatial_scale)`` as a cell index and pools the
cells from the first to the last inclusive. RoIAlign samples at continuous coordinates in
which cell ``(r, c)`` has its centre at ``(x, y) = (c, r)``; with ``aligned=True`` it first
shifts the box by -0.5 cell so that box corners are cell corners (the "half-pixel"
correction of Detectron2, the right choice for new models), with ``aligned=False`` (the
Mask R-CNN paper's and torchvision's detection models' setting) it does not.

The fast layers are vectorised PyTorch: no Python loop runs over RoIs. Because they do
not read like the papers, each has a short reference version beside it that
does, looping over RoIs, bins and sampling points: :func:`roi_pool_reference` and
:func:`roi_align_reference`, tested equal to the fast ones and to torchvision's; the
chapters teach these first. ``tests/test_roi_ops.py``
checks :func:`roi_pool` and :func:`roi_align` against ``torchvision.ops`` forward and
backward (RoIPool bit for bit, RoIAlign to rounding), and ``benchmarks/bench_roi_ops.py``
times them against torchvision's compiled kernels. How each is computed, and why that way,
is in the docstrings of :func:`_roi_pool_forward` and :func:`_roi_align_avg_plan`. Outputs live
on the input's device, in its dtype; no gradient flows into the boxes (as in torchvision).
On CPU the layers' feature work uses :data:`CPU_THREADS` threads (torch's setting by
default; its comment says when to lower it).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ROI_OP_NAMES",
    "RoIOp",
    "get_roi_op",
    "bilinear_sample",
    "roi_align",
    "roi_align_reference",
    "roi_align_sampling_points",
    "roi_pool",
    "roi_pool_cells",
    "roi_pool_reference",
    "roi_warp",
]

#: Boxes as torchvision takes them: a (K, 5) tensor (batch index, x1, y1, x2, y2), or a
#: list with one (L_i, 4) tensor of (x1, y1, x2, y2) per image.
Boxes = Tensor | Sequence[Tensor]

#: The RoI layers of Mask R-CNN Table 2(c), in the table's order.
ROI_OP_NAMES = ("roipool", "roiwarp_max", "roiwarp_avg", "roialign_max", "roialign_avg")

MODES = ("avg", "max")

#: torchvision's RoIPool starts every bin's running maximum at -FLT_MAX (in float64 too)
#: and keeps a value only if it is strictly greater, so a bin whose values are all
#: <= -FLT_MAX (or nan) outputs -FLT_MAX and passes no gradient. We reproduce that.
FLT_MAX = float(torch.finfo(torch.float32).max)

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

#: Upper bound on the memory of RoIPool's max tables (see :func:`_roi_pool_forward`); the
#: channels are processed in slices when the tables of all channels would not fit.
ROI_POOL_TABLE_BYTES = 512 * 2**20


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


# ----------------------------------------------------------------------------------------
# A sparse weighted gather with an exact, fast backward.
# ----------------------------------------------------------------------------------------


class _WeightedGather(torch.autograd.Function):
    """``out[r] = sum_e weights[e] * x[cols[e]]`` over the entries e of bag r.

    In matrix terms ``out = S @ x`` for a sparse ``(R, M)`` matrix S stored row by row:
    entry e is ``S[rows[e], cols[e]] = weights[e]``, the entries of row 0 first, then row 1,
    ..., and ``offsets[r]`` is where row r starts. RoIAlign is exactly this with x the
    feature map as ``(N * H * W, C)`` rows (one row per cell, channels contiguous) and one
    row of S per output bin holding the bilinear weights of the cells the bin reads.

    The forward is ``torch.nn.functional.embedding_bag(mode="sum")`` with per-sample
    weights, a kernel made for exactly this (it is how recommender models sum embedding
    rows), vectorised over the channels. Its own backward measured ~5x slower than its
    forward on CPU, so the backward here is the same gather with the transposed matrix,
    ``grad_x = S^T @ grad_out``: the entries sorted by column (a stable sort of integers)
    and this Function called again, which also keeps the backward differentiable.
    """

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor, cols: Tensor, offsets: Tensor, weights: Tensor):
        ctx.save_for_backward(rows, cols, weights)
        ctx.num_x_rows = x.shape[0]
        return F.embedding_bag(cols, x, offsets, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        rows, cols, weights = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        # S^T row by row: the entries grouped by column, in row order within a column.
        with _cpu_threads(cols.device, limit=1):
            order = torch.argsort(cols, stable=True)
            col_counts = torch.bincount(cols, minlength=ctx.num_x_rows)
            col_offsets = torch.cumsum(col_counts, 0) - col_counts
            transposed = (cols[order], rows[order], col_offsets, weights[order])
        with _cpu_threads(cols.device):
            grad_x = _WeightedGather.apply(grad_out.contiguous(), *transposed)
        return grad_x, None, None, None, None


def _feature_rows(input: Tensor) -> Tensor:
    """``(N, C, H, W)`` to ``(N * H * W, C)``: one row per cell, channels contiguous, so
    each gathered cell is one contiguous vector (free if the input is channels_last)."""
    return input.permute(0, 2, 3, 1).reshape(-1, input.shape[1])


def _bags_to_output(out: Tensor, num_rois: int, ph: int, pw: int) -> Tensor:
    """``(K * ph * pw, C)`` bins back to torchvision's contiguous ``(K, C, ph, pw)``."""
    return out.view(num_rois, ph, pw, out.shape[1]).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------
# RoIPool (chapter 03)
# ----------------------------------------------------------------------------------------


def _round_half_away(v: Tensor) -> Tensor:
    """C's ``round``: halves away from zero (torch.round rounds halves to even, which
    would put x = 2.5 cells in cell 2 where torchvision's kernel says 3). ``v - trunc(v)``
    is exact in floating point, so the comparison with 0.5 is too."""
    t = v.trunc()
    return torch.where((v - t).abs() >= 0.5, t + v.sign(), t)


def _roi_pool_bins(rois: Tensor, spatial_scale: float, ph: int, pw: int):
    """Fast R-CNN's bins, computed as torchvision's kernel does, in the RoIs' dtype.

    The box is rounded to cells, ``x1 = round(x1 * scale)`` and likewise for the others,
    and covers cells x1..x2 inclusive, so its width is ``max(x2 - x1 + 1, 1)`` cells (a
    malformed box becomes one cell). With ``b = width / pw``, bin j covers the cells
    ``[floor(j * b), ceil((j + 1) * b))`` from x1: neighbouring bins overlap by a cell
    when b is not an integer, and a narrow box repeats cells across bins.

    Returns ``(hstart, hend)`` of shape ``(K, ph)`` and ``(wstart, wend)`` of shape
    ``(K, pw)``, int64 half-open cell ranges, not yet clipped to the map.
    """
    dtype = rois.dtype
    # The scale in the RoIs' dtype, as the kernel's `T spatial_scale` parameter holds it.
    scale = torch.tensor(spatial_scale, dtype=dtype, device=rois.device)
    x1, y1, x2, y2 = (_round_half_away(rois[:, i] * scale).long() for i in range(1, 5))
    roi_w = (x2 - x1 + 1).clamp(min=1)
    roi_h = (y2 - y1 + 1).clamp(min=1)
    bin_w = (roi_w.to(dtype) / pw)[:, None]  # (K, 1)
    bin_h = (roi_h.to(dtype) / ph)[:, None]
    j = torch.arange(pw, dtype=dtype, device=rois.device)
    i = torch.arange(ph, dtype=dtype, device=rois.device)
    wstart = torch.floor(j * bin_w).long() + x1[:, None]
    wend = torch.ceil((j + 1) * bin_w).long() + x1[:, None]
    hstart = torch.floor(i * bin_h).long() + y1[:, None]
    hend = torch.ceil((i + 1) * bin_h).long() + y1[:, None]
    return hstart, hend, wstart, wend


def _floor_log2_table(n: int, device: torch.device) -> Tensor:
    """``table[m] = floor(log2(m))`` for m in 1..n (``table[0]`` unused), exactly."""
    return torch.tensor([0] + [m.bit_length() - 1 for m in range(1, n + 1)], device=device)


def _pool_corners(rois: Tensor, spatial_scale: float, ph: int, pw: int, shape):
    """Where each RoIPool bin reads the tables of :func:`_roi_pool_forward`.

    Returns the ``(K, ph, pw)`` mask of empty bins; the number of table levels needed in
    each direction; the ``(K * ph * pw,)`` rows of the ``(levels, N, H, W)`` table (see
    :func:`_key_tables`) holding each bin's top-left block, or the extra last row (key 0)
    for an empty bin; and, for the top-right, bottom-left and bottom-right blocks, the
    bins (flat indices) whose block there differs from those already read, with its rows.
    """
    n_img, _, height, width = shape
    batch = rois[:, 0].long()
    hstart, hend, wstart, wend = _roi_pool_bins(rois, spatial_scale, ph, pw)
    # Clip to the map, as the kernel does; a bin outside the map becomes empty.
    hstart, hend = hstart.clamp(0, height), hend.clamp(0, height)
    wstart, wend = wstart.clamp(0, width), wend.clamp(0, width)
    bin_h = (hend - hstart)[:, :, None]  # (K, ph, 1)
    bin_w = (wend - wstart)[:, None, :]  # (K, 1, pw)
    empty = (bin_h <= 0) | (bin_w <= 0)  # (K, ph, pw)

    log2 = _floor_log2_table(max(height, width), rois.device)
    level_h = log2[bin_h.clamp(min=1)]  # (K, ph, 1)
    level_w = log2[bin_w.clamp(min=1)]  # (K, 1, pw)
    n_lh = int(level_h.max()) + 1 if rois.shape[0] else 1
    n_lw = int(level_w.max()) + 1 if rois.shape[0] else 1

    top, left = hstart[:, :, None], wstart[:, None, :]
    bottom = hend[:, :, None] - (1 << level_h)
    right = wend[:, None, :] - (1 << level_w)
    block = ((level_h * n_lw + level_w) * n_img + batch[:, None, None]) * (height * width)
    spare = n_lh * n_lw * n_img * height * width  # the extra last row
    corners = [
        torch.where(empty, spare, block + r * width + c).reshape(-1)
        for r, c in ((top, left), (top, right), (bottom, left), (bottom, right))
    ]
    # A side of 2^k cells is one block: then the two corners on that side coincide (the
    # usual case for small bins: 1, 2 and 4 cells). List, for the three other corners,
    # only the bins where they add something.
    tall = (bottom != top) & ~empty  # (K, ph, pw)
    wide = (right != left) & ~empty
    extra = []
    for need, corner in zip((wide, tall, tall & wide), corners[1:], strict=True):
        bins = need.reshape(-1).nonzero().squeeze(1)
        extra.append((bins, corner[bins]))
    return empty, n_lh, n_lw, corners[0], extra


def _roi_pool_forward(
    input: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float, need_argmax: bool
):
    """RoIPool's output and argmax, without autograd. See :func:`roi_pool` for the maths.

    The naive computation scans every cell of every bin for every channel: K x C x (area
    of the RoI) comparisons, which is what torchvision's CPU kernel does, one RoI at a
    time. Vectorising that scan means padding every bin to the largest bin, or masks over
    the map (K x ph x H row masks and K x pw x W column masks, then masked maxima over
    K x C x H x W values): most of the work is spent on cells outside the bin.

    We answer each bin in O(1) instead, with a 2-D sparse table (range-maximum query).
    For every level (a, b), ``table[a, b][n, h, w, c]`` holds the maximum of the
    ``2^a x 2^b`` block of image n, channel c, whose top-left cell is (h, w). A bin of
    ``bh x bw`` cells is covered by the four blocks of size ``2^floor(log2 bh) x
    2^floor(log2 bw)`` anchored at its four corners (they overlap, which is harmless for a
    maximum), so its maximum is the maximum of four table entries: four gathers of C
    contiguous values per bin, whatever its size. Where a side is a power of two the
    blocks on that side coincide, so only the bins with distinct blocks gather the other
    corners (at 7 x 7 over the benchmark's boxes, a quarter of the bins need a second
    block, 6% all four: the gathers took 35-65% less time). Level (a, b) is one
    elementwise maximum of two shifted copies of level (a, b - 1) (or (a - 1, 0)), so the
    tables cost ``levels x N x C x H x W`` work and memory; only the levels the largest
    bin needs are built (3 x 3 for 7 x 7 bins over boxes up to ~30 cells).

    In the benchmark's training step (K = 512, C = 256, 50 x 50, 7 x 7, one thread) the
    time splits, by the profiler, into rough quarters: building the keys and tables, the
    corner gathers, decoding the keys and transposing to (K, C, ph, pw), and the backward
    (target indices, transposing the gradient, one scatter-add). Every step is a pass
    over memory; what is left is PyTorch's one-op-at-a-time execution, not arithmetic.

    The gradient goes to one cell per bin, the argmax, with torchvision's tie rule: its
    kernel scans a bin row by row and keeps a value only if it is strictly greater, so
    among equal maxima the first in row-major order wins, the one with the smallest flat
    index ``h * W + w``. (ReLU features make ties common: a bin of zeros must send its
    gradient to its first cell.) So the tables do not hold values but int64 keys that
    order like (value, -index) (:func:`_max_keys`): the maximum key is the maximum value
    at its first cell, for a block and for a union of blocks alike (a cell attaining the
    union's maximum attains its block's). One integer maximum merges values and argmaxes.

    Python loops only over the table levels (at most log2 H x log2 W), the three extra
    corners and, beyond a memory budget, slices of channels; never over RoIs.

    Returns the ``(K, C, ph, pw)`` values and, if ``need_argmax``, what the backward
    needs (else None): the ``(K, ph, pw, C)`` int64 keys, whose low words
    ``_KEY_CELL_MAX - cell`` encode the argmax (cell = ``h * W + w`` within the image and
    channel; 0 where nothing was pooled), the ``(K, ph, pw)`` mask of empty bins (None if
    there is none), and whether the input holds values that torchvision never picks.
    """
    n_img, channels, height, width = input.shape
    num_rois = rois.shape[0]
    device = input.device
    batch = rois[:, 0].long()
    with _cpu_threads(device, limit=1):
        empty, n_lh, n_lw, first, extra = _pool_corners(rois, spatial_scale, ph, pw, input.shape)
    rows = n_lh * n_lw * n_img * height * width

    x = input.detach().permute(0, 2, 3, 1)  # (N, H, W, C): each cell's channels together
    # Without a gradient to route, a float32 forward needs no argmax, and the keys shrink
    # to the values' int32 order: half the bytes to build, gather and compare.
    with_cell = need_argmax or input.dtype == torch.float64
    per_channel = (rows + 1) * (8 if with_cell else 4)
    chunk = max(1, min(channels, ROI_POOL_TABLE_BYTES // per_channel))
    best = []
    # Usually one pass; channel slices only when all channels' tables would not fit.
    for c0 in range(0, channels, chunk):
        keys = _key_tables(_max_keys(x[..., c0 : c0 + chunk], with_cell), n_lh, n_lw)
        key = keys.index_select(0, first)  # (K * ph * pw, chunk)
        for bins, rows in extra:
            if len(bins) == 0:
                continue
            # Only the bins this corner adds to: gather, compare, write back.
            part = keys.index_select(0, rows)
            key.index_copy_(0, bins, torch.maximum(key.index_select(0, bins), part, out=part))
        best.append(key)
        del keys
    key = torch.cat(best, 1) if len(best) > 1 else best[0]
    key = key.view(num_rois, ph, pw, channels)
    high, low = _split_key(key) if with_cell else (key, None)

    # Decode in the computed (K, ph, pw, C) layout, where every pass is contiguous, and
    # transpose the values once at the end (measured faster than decoding transposed).
    if input.dtype == torch.float64:
        # Ranks do not decode to values: read the values at the argmax. low holds
        # _KEY_CELL_MAX - cell, and 0 where nothing was pooled.
        pooled = low != 0
        cell = torch.where(pooled, _KEY_CELL_MAX - low, 0)
        plane = batch[:, None] * channels + torch.arange(channels, device=device)
        flat = plane[:, None, None, :] * (height * width) + cell
        value = input.detach().reshape(-1)[flat.view(-1)].view(key.shape)
        fill = torch.where(empty, 0.0, -FLT_MAX).to(value.dtype)[..., None]
        value = torch.where(pooled, value, fill)
    else:
        # Undo the order trick: flip the bits of negative numbers back, read as float32.
        high = high.contiguous()
        bits = (high >> 31).bitwise_and_(0x7FFFFFFF).bitwise_xor_(high)
        value = bits.view(torch.float32).to(input.dtype)
    # A bin pools nothing when it is empty or holds only values torchvision never picks;
    # the backward needs guards only for those that occur.
    out = value.permute(0, 3, 1, 2).contiguous()
    if not need_argmax:
        return out, None
    any_empty = bool(empty.any())
    any_unusable = not bool((x > -FLT_MAX).all())
    return out, (key, empty if any_empty else None, any_unusable)


#: Keys of :func:`_max_keys`: the low 32 bits hold ``_KEY_CELL_MAX - cell`` (so that a
#: larger key means an earlier cell); 0 there means "no cell".
_KEY_CELL_MAX = 2**31 - 1
_LITTLE_ENDIAN = sys.byteorder == "little"


def _split_key(key: Tensor) -> tuple[Tensor, Tensor]:
    """The high and low 32 bits of int64 keys, as int32 tensors (views when we can)."""
    if _LITTLE_ENDIAN:
        halves = key.view(torch.int32)  # (..., 2 * C): low and high words interleaved
        return halves[..., 1::2], halves[..., 0::2]
    return (key >> 32).int(), (key & 0xFFFFFFFF).int()


def _max_keys(x: Tensor, with_cell: bool = True) -> Tensor:
    """int64 keys, one per value of ``x`` (N, H, W, C), that order like (value, -cell).

    ``key = order(value) * 2^32 + (2^31 - 1 - cell)`` with ``cell = h * W + w`` and
    ``order`` an int32 that orders (and ties) like the values. For float32 (and narrower
    types, upcast exactly) ``order`` is the IEEE bit pattern read as an integer, with the
    bits of negative numbers flipped: the classic trick that makes floats sort as
    integers, applied after turning -0.0 into +0.0 (they compare equal; so a bin whose
    first maximum is -0.0 outputs +0.0, which torch.equal still calls equal). A float64's
    64 bits leave no room for the cell, so there ``order`` is the value's dense rank in its
    (image, channel) map, from a sort: slower, used by the tests rather than by models.

    Values torchvision's kernel never selects (nan, and <= -FLT_MAX: it starts at -FLT_MAX
    and keeps strictly greater values) get ``order(-FLT_MAX) * 2^32`` (rank 0 for
    float64): below every usable key, decoding to -FLT_MAX with "no cell", which is
    torchvision's output for a bin of only such values.

    With ``with_cell=False`` (float32 only) the keys are just ``order(value)``, int32.
    """
    n_img, height, width, channels = x.shape
    unusable = ~(x > -FLT_MAX)  # True for nan too
    if x.dtype == torch.float64:
        planes = x.permute(0, 3, 1, 2).reshape(n_img * channels, height * width)
        sorted_values, position = planes.sort(dim=1)
        step = torch.ones_like(sorted_values, dtype=torch.int32)
        step[:, 1:] = (sorted_values[:, 1:] != sorted_values[:, :-1]).int()
        rank = torch.empty_like(step).scatter_(1, position, step.cumsum(1, dtype=torch.int32))
        order = rank.view(n_img, channels, height, width).permute(0, 2, 3, 1)
        floor = 0
    else:
        order = _float_order(x.float() + 0.0)  # + 0.0 turns -0.0 into +0.0
        floor = int(_float_order(torch.tensor(-FLT_MAX)))
        if not with_cell:
            return order.masked_fill_(unusable, floor)
    cell = torch.arange(height * width, device=x.device).view(1, height, width, 1)
    key = order.long() * 2**32 + (_KEY_CELL_MAX - cell)
    return key.masked_fill_(unusable, floor * 2**32)


def _float_order(x: Tensor) -> Tensor:
    """float32 to int32 with the same order: the bit pattern, the lower 31 bits flipped
    for negative numbers (whose patterns otherwise grow as the numbers fall)."""
    bits = x.view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _key_tables(key: Tensor, n_lh: int, n_lw: int) -> Tensor:
    """The 2-D sparse tables of :func:`_roi_pool_forward` over ``key`` (N, H, W, C).

    Returns ``(n_lh * n_lw * N * H * W + 1, C)`` rows of keys: row ``((a * n_lw + b) * N +
    n) * H * W + h * W + w`` is the largest key of the ``2^a x 2^b`` block at (h, w),
    filled where the block fits in the map (``h + 2^a <= H``, ``w + 2^b <= W``), the only
    blocks a bin asks for (the rest is never read and left uninitialised). The last row
    holds key 0: value 0, no cell, for empty bins.
    """
    n_img, height, width, channels = key.shape
    rows = n_lh * n_lw * n_img * height * width
    flat = key.new_empty((rows + 1, channels))
    flat[rows] = 0
    table = flat[:rows].view(n_lh, n_lw, n_img, height, width, channels)
    table[0, 0] = key
    for a in range(1, n_lh):
        # 2^a rows: the blocks of 2^(a-1) rows at h and h + 2^(a-1).
        s, h = 1 << (a - 1), height - (1 << a) + 1
        prev = table[a - 1, 0]
        torch.maximum(prev[:, :h], prev[:, s : s + h], out=table[a, 0, :, :h])
    for a in range(n_lh):
        h = height - (1 << a) + 1
        for b in range(1, n_lw):
            s, w = 1 << (b - 1), width - (1 << b) + 1
            prev = table[a, b - 1, :, :h]
            torch.maximum(prev[:, :, :w], prev[:, :, s : s + w], out=table[a, b, :, :h, :w])
    return flat


class _RoIPoolFunction(torch.autograd.Function):
    """RoIPool with torchvision's backward: each output's gradient is added to its argmax
    cell (accumulating where bins share an argmax), nothing where no cell was pooled.

    A custom Function because the forward gets values and argmaxes together from the
    key tables (and skips the argmax when no gradient is needed). The backward is one
    scatter-add of ``grad_output`` into the gradient held channels last, in the order
    the keys were computed, (RoI, bin row, bin column, channel): for any one cell (which
    belongs to one image and channel) the contributions arrive in torchvision's loop
    order (RoI, bin row, bin column), so even the float sums agree bit for bit. Scattering
    in this order transposes ``grad_output`` (4-byte floats) instead of the int64 targets,
    measured ~2x faster at 14 x 14 bins. It is written with differentiable ops, so double
    backward works too.
    """

    @staticmethod
    def forward(ctx, input, rois, ph, pw, spatial_scale):
        need_argmax = ctx.needs_input_grad[0]
        out, argmax = _roi_pool_forward(input, rois, ph, pw, spatial_scale, need_argmax)
        if need_argmax:
            key, empty, any_unusable = argmax
            ctx.save_for_backward(rois, key, empty)
            ctx.any_unusable = any_unusable
        ctx.input_shape = input.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with _cpu_threads(grad_out.device):
            return _RoIPoolFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        rois, key, empty = ctx.saved_tensors  # key: (K, ph, pw, C); empty: (K, ph, pw)
        n_img, channels, height, width = ctx.input_shape
        size = n_img * channels * height * width
        # Targets in the channels-last gradient (N, H, W, C): (image * H * W + cell) * C +
        # channel, with cell = _KEY_CELL_MAX - low. So target = base - C * low, in place.
        target = key & 0xFFFFFFFF  # low words, int64
        nothing = (target == 0) if ctx.any_unusable else None  # bins of unusable values
        batch = rois[:, 0].long()
        channel = torch.arange(channels, device=key.device)
        base = batch[:, None] * (height * width * channels) + channel + _KEY_CELL_MAX * channels
        torch.add(base[:, None, None, :], target, alpha=-channels, out=target)
        for mask in (empty[..., None] if empty is not None else None, nothing):
            if mask is not None:  # bins that pooled nothing: to a spare slot at the end
                target.masked_fill_(mask, size)
        grad = grad_out.permute(0, 2, 3, 1).reshape(-1)  # (RoI, row, column, channel)
        grad_input = grad_out.new_zeros(size + 1).scatter_add(0, target.view(-1), grad)
        grad_input = grad_input[:size].view(n_img, height, width, channels)
        return grad_input.permute(0, 3, 1, 2).contiguous(), None, None, None, None


def roi_pool(
    input: Tensor, boxes: Boxes, output_size: int | tuple[int, int], spatial_scale: float = 1.0
) -> Tensor:
    """RoI max pooling, Fast R-CNN section 2.1.

    Each RoI is rounded to the feature grid, ``x1 = round(x1 * spatial_scale)`` and
    likewise for y1, x2, y2 (halves away from zero), and covers the cells from (x1, y1)
    to (x2, y2) inclusive: ``w = max(x2 - x1 + 1, 1)`` by ``h = max(y2 - y1 + 1, 1)``
    cells. It is cut into ``ph x pw`` bins, bin (i, j) covering the rows
    ``[floor(i h / ph), ceil((i + 1) h / ph))`` and columns ``[floor(j w / pw),
    ceil((j + 1) w / pw))`` from (y1, x1), clipped to the map, and each bin outputs the
    maximum of its cells, per channel:

        y[k, c, i, j] = max over (r, s) in bin(k, i, j) of x[b_k, c, r, s]

    (the paper's "h/H x w/W sub-windows"; in section 2.3's notation ``y_rj = x_i*(r,j)``
    with ``i*(r, j)`` the argmax over sub-window ``R(r, j)``). A bin that lies outside
    the map outputs 0. The gradient of each output goes to the cell that attained the
    maximum, the first in row-major order on ties, and adds up where several bins chose
    the same cell (Fast R-CNN eq. (4)).

    Taught in chapter 03 ("Fast R-CNN and RoIPool"); :func:`roi_pool_cells` shows the
    bins of one box. How it is computed without a loop over RoIs: see
    :func:`_roi_pool_forward`.

    Args:
        input: ``(N, C, H, W)`` feature maps (float32 or float64).
        boxes: ``(K, 5)`` tensor of (batch_index, x1, y1, x2, y2), or a list of ``(L_i,
            4)`` tensors of (x1, y1, x2, y2), one per image; in image coordinates.
        output_size: ``ph`` (square) or ``(ph, pw)``.
        spatial_scale: maps box coordinates to the feature map: 1 / stride.

    Returns:
        ``(K, C, ph, pw)`` pooled features. Equals ``torchvision.ops.roi_pool``, forward
        and backward, bit for bit on CPU (tests/test_roi_ops.py; the one exception: a
        float32 bin whose first maximum is -0.0 outputs +0.0, which compares equal),
        including its handling of values it never selects (nan, and values <= -FLT_MAX:
        a bin of only those outputs -FLT_MAX and passes no gradient).
    """
    fn = "roi_pool"
    _check_input(fn, input)
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    with _cpu_threads(input.device):
        rois = _rois_from_boxes(fn, boxes, input)
        return _RoIPoolFunction.apply(input, rois, ph, pw, spatial_scale)


def roi_pool_cells(
    box: Tensor | Sequence[float],
    spatial_scale: float,
    output_size: int | tuple[int, int],
    *,
    feature_size: tuple[int, int] | None = None,
) -> Tensor:
    """The feature cells each RoIPool bin of one box covers: quantisation made visible.

    Taught in chapter 03 and in chapter 06, which uses it to show Mask R-CNN's point
    about quantisation (section 3): at stride 16, boxes starting at x = 1.1 px and x = 2.2
    px both round to cell 0, so RoIPool gives them identical bins, while RoIAlign's
    sampling points (:func:`roi_align_sampling_points`) move with the box.

    Args:
        box: one box (x1, y1, x2, y2) in image coordinates (a tensor keeps its dtype;
            numbers are taken as float32, a model's usual dtype, which can matter for a
            coordinate that sits exactly on a half cell).
        spatial_scale: 1 / stride.
        output_size: ``ph`` or ``(ph, pw)`` bins.
        feature_size: ``(H, W)`` of the feature map to clip the bins to, as
            :func:`roi_pool` does; None leaves them unclipped.

    Returns:
        ``(ph, pw, 4)`` int64 cell ranges ``(x_start, y_start, x_end, y_end)``, half-open
        (bin (i, j) pools columns x_start..x_end - 1 and rows y_start..y_end - 1): the
        rectangles to draw over the feature grid. They are computed by the same code as
        :func:`roi_pool` itself.
    """
    fn = "roi_pool_cells"
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    roi = _single_box(fn, box)
    hstart, hend, wstart, wend = (t[0] for t in _roi_pool_bins(roi, spatial_scale, ph, pw))
    if feature_size is not None:
        height, width = feature_size
        hstart, hend = hstart.clamp(0, height), hend.clamp(0, height)
        wstart, wend = wstart.clamp(0, width), wend.clamp(0, width)
    return torch.stack(
        (
            wstart[None, :].expand(ph, pw),
            hstart[:, None].expand(ph, pw),
            wend[None, :].expand(ph, pw),
            hend[:, None].expand(ph, pw),
        ),
        dim=-1,
    )


def roi_pool_region(boxes: Tensor, spatial_scale: float) -> tuple[Tensor, Tensor]:
    """What RoIPool actually reads of each box, and how much of the box that is.

    RoIPool's first quantisation rounds the box to whole cells (``round(x * scale)``,
    :func:`_roi_pool_bins`): it reads the cells x1..x2 inclusive, i.e. the image region
    ``[x1 / scale, (x2 + 1) / scale)``, whatever the box's sub-cell position. The error is
    up to a cell on each side, so it matters in proportion to the box's size *in cells*:
    a box 4 cells wide can lose or gain a quarter of its width, one 28 cells wide a
    thirtieth. Chapter 08 uses this to explain why RoIAlign's gain is several times
    Mask R-CNN's (Table 2(c)) on our small images.

    Args:
        boxes: ``(R, 4)`` boxes (x1, y1, x2, y2) in image pixels.
        spatial_scale: 1 / stride of the map they are pooled from.

    Returns:
        ``(regions, iou)``: ``(R, 4)`` the region in image pixels that RoIPool's bins cover
        (the union of :func:`roi_pool_cells`'s bins, unclipped) and ``(R,)`` its IoU with
        the box (1 only for a box on cell boundaries).
    """
    fn = "roi_pool_region"
    spatial_scale = _check_scale(fn, spatial_scale)
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{fn}: boxes must be an (R, 4) tensor, got {getattr(boxes, 'shape', boxes)}"
        )
    boxes = boxes.float() if not boxes.is_floating_point() else boxes
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
    hstart, hend, wstart, wend = _roi_pool_bins(rois, spatial_scale, 1, 1)
    stride = 1.0 / spatial_scale
    regions = torch.stack([wstart[:, 0], hstart[:, 0], wend[:, 0], hend[:, 0]], 1) * stride
    regions = regions.to(boxes.dtype)
    lt = torch.maximum(boxes[:, :2], regions[:, :2])
    rb = torch.minimum(boxes[:, 2:], regions[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    union = area + (regions[:, 2:] - regions[:, :2]).prod(dim=1) - inter
    return regions, inter / union


def roi_pool_reference(
    input: Tensor, boxes: Boxes, output_size: int | tuple[int, int], spatial_scale: float = 1.0
) -> Tensor:
    """RoIPool written as Fast R-CNN section 2.1 defines it, one RoI and one bin at a time.

    The readable definition beside :func:`roi_pool`, whose vectorised max tables are hard
    to learn from; equal to it (and to ``torchvision.ops.roi_pool``) forward and backward
    for finite inputs (tests/test_roi_ops.py), and hundreds of times slower. Taught in
    chapter 03 before the fast version's speed.

    Args and returns: as :func:`roi_pool`.
    """
    fn = "roi_pool_reference"
    _check_input(fn, input)
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    rois = _rois_from_boxes(fn, boxes, input)
    height, width = input.shape[2:]
    # Arithmetic in the boxes' dtype, as torchvision's kernel does it.
    dtype = rois.dtype
    scale = torch.tensor(spatial_scale, dtype=dtype)
    rows = []
    for roi in rois:
        image = int(roi[0])
        # First quantisation: the box to whole cells (C's round, halves away from zero).
        x1, y1, x2, y2 = (int(_round_half_away(v * scale)) for v in roi[1:])
        roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)  # cells, inclusive
        bin_w = torch.tensor(roi_w, dtype=dtype) / pw
        bin_h = torch.tensor(roi_h, dtype=dtype) / ph
        bins = []
        for i in range(ph):
            # Second quantisation: bin edges rounded outwards, then clipped to the map.
            r0 = min(max(y1 + int(torch.floor(i * bin_h)), 0), height)
            r1 = min(max(y1 + int(torch.ceil((i + 1) * bin_h)), 0), height)
            for j in range(pw):
                c0 = min(max(x1 + int(torch.floor(j * bin_w)), 0), width)
                c1 = min(max(x1 + int(torch.ceil((j + 1) * bin_w)), 0), width)
                if r1 <= r0 or c1 <= c0:  # the bin lies outside the map
                    bins.append(input.new_zeros(input.shape[1]))
                else:  # max over the bin's cells, per channel (gradient: first winner)
                    bins.append(input[image, :, r0:r1, c0:c1].flatten(1).max(1).values)
        rows.append(torch.stack(bins, 1).view(-1, ph, pw))
    if not rows:
        return input.new_zeros((0, input.shape[1], ph, pw))
    return torch.stack(rows)


# ----------------------------------------------------------------------------------------
# RoIAlign and RoIWarp (chapter 06)
# ----------------------------------------------------------------------------------------


def _sampling_grid(
    rois: Tensor, spatial_scale: float, ph: int, pw: int, sampling_ratio: int, aligned: bool
):
    """RoIAlign's sampling points, per axis: they are separable.

    For a RoI with corners scaled to the map, ``x1' = x1 * scale - o`` etc. (``o = 0.5``
    when aligned, else 0), size ``w = x2' - x1'`` (forced >= 1 when not aligned, so a
    malformed box becomes one cell), bins of ``w / pw`` and ``n`` points per bin side
    (``sampling_ratio``, or ``ceil(w / pw)`` when it is <= 0: about one point per cell),
    the points of bin column j are at

        x = x1' + j * (w / pw) + (s + 1/2) * (w / pw) / n,      s = 0, ..., n - 1

    and likewise in y. Every point of bin (i, j) is (x of column j, y of row i), so the
    2-D grid is the product of two 1-D grids. Computed in the RoIs' dtype with the same
    operations in the same order as torchvision's kernel, so the points are bit-equal.

    Returns ``(ys, xs, ny, nx)``: ``ys`` of shape ``(K, ph, G)``, ``xs`` ``(K, pw, G')``
    and the per-RoI point counts ``ny``, ``nx`` (int64, ``(K,)``, 0 for an empty grid).
    With an adaptive ratio the counts differ by RoI; the grids are padded to the largest
    (G, G') and points ``s >= n`` of a RoI must be ignored (their coordinates are
    meaningless).
    """
    dtype, device = rois.dtype, rois.device
    scale = torch.tensor(spatial_scale, dtype=dtype, device=device)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    axes = []
    for start, size, bins in ((y1, roi_h, ph), (x1, roi_w, pw)):
        bin_size = size / bins
        if sampling_ratio > 0:
            n = torch.full_like(bin_size, sampling_ratio, dtype=torch.long)
        else:
            # ceil(w / pw); negative for a reversed aligned box: no points at all.
            n = torch.ceil(bin_size).long().clamp(min=0)
        n_max = int(n.max()) if n.numel() else 0
        bin_index = torch.arange(bins, dtype=dtype, device=device)
        point = torch.arange(n_max, dtype=dtype, device=device) + 0.5
        n_div = n.clamp(min=1).to(dtype)  # padded points divide by 1: no inf/nan
        coords = (start[:, None, None] + bin_index[None, :, None] * bin_size[:, None, None]) + (
            point[None, None, :] * bin_size[:, None, None]
        ) / n_div[:, None, None]
        axes.append((coords, n))
    (ys, ny), (xs, nx) = axes
    return ys, xs, ny, nx


def _bilinear_taps(coords: Tensor, size: int):
    """torchvision's bilinear interpolation along one axis of ``size`` cells.

    A point at ``t`` reads cells ``lo = floor(t)`` and ``hi = lo + 1`` with weights
    ``1 - (t - lo)`` and ``t - lo``. Border rules (torchvision's, from Caffe2): a point
    below -1 or beyond ``size`` reads nothing (weights 0: "outside the map"); otherwise
    t is clamped to >= 0, and a point at or past the last cell reads the last cell with
    weight 1. In 2-D a point is outside if either coordinate is, and its four weights
    are products of the two axes' weights, so applying the rule per axis gives the same
    zeros.

    Returns ``(lo, hi, w_lo, w_hi)``, indices int64 (always valid cells) and weights in
    the coordinates' dtype.
    """
    # `not (t >= -1 and t <= size)` rather than `t < -1 or t > size`: nan is outside too.
    inside = (coords >= -1.0) & (coords <= size)
    t = torch.where(inside, coords.clamp(min=0.0), 0.0)
    lo = t.floor().long()  # t >= 0, so floor is the kernel's (int) truncation
    at_end = lo >= size - 1
    lo = torch.where(at_end, size - 1, lo)
    hi = torch.where(at_end, size - 1, lo + 1)
    t = torch.where(at_end, lo.to(t.dtype), t)
    frac = t - lo.to(t.dtype)
    w_lo = torch.where(inside, 1.0 - frac, 0.0)
    w_hi = torch.where(inside, frac, 0.0)
    return lo, hi, w_lo, w_hi


def _axis_weights(coords: Tensor, n: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The summed interpolation weights of each bin along one axis, compacted.

    ``W[k, i, :]`` is the ``(size,)`` vector of the sum over the bin's points of their
    bilinear weights (the RoIAlign-avg output is ``W_y X W_x^T / (n_y n_x)`` per RoI). It has
    at most two nonzeros per point, so we keep only those: ``(K, bins, L)`` cell indices
    and weights, L the most nonzeros any bin has (padding has weight 0). Duplicates (two
    points reading the same cell) are merged, which is where this beats summing the
    points one by one.
    """
    num_rois, bins, n_max = coords.shape
    lo, hi, w_lo, w_hi = _bilinear_taps(coords, size)
    used = torch.arange(n_max, device=coords.device)[None, None, :] < n[:, None, None]
    dense = coords.new_zeros((num_rois, bins, size))
    dense.scatter_add_(2, lo, torch.where(used, w_lo, 0.0))
    dense.scatter_add_(2, hi, torch.where(used, w_hi, 0.0))
    nonzero = dense != 0
    width = int(nonzero.sum(2).max()) if dense.numel() else 0
    # Nonzero cells first (a stable sort keeps them in ascending order), then padding.
    cells = torch.argsort(nonzero.to(torch.uint8), dim=2, descending=True, stable=True)
    cells = cells[:, :, :width]
    return cells, dense.gather(2, cells)


def _roi_align_avg_plan(rois: Tensor, size, ph, pw, spatial_scale, sampling_ratio, aligned):
    """RoIAlign (average) as one sparse-times-dense product: the sparse matrix.

    The output is linear in the features: per RoI and channel, ``Y = W_y X W_x^T`` with
    ``W_y`` the ``(ph, H)`` summed interpolation weights of the bin rows and ``W_x`` the
    ``(pw, W)`` ones of the bin columns (:func:`_axis_weights`). Computed densely that is
    two matrix products per RoI and channel (``K x C x H x W x pw`` multiply-adds: 2.3
    GMAC at K = 512, C = 256, 50 x 50, 7 x 7; measured 1.5x torchvision's forward time on
    2 CPU cores even as batched matmuls), but W_y and W_x have only a few nonzeros per
    row. So we take, for every bin, the outer product of its row and column nonzeros:
    about (n + 1)^2 cells with weights ``w_y * w_x / (n_y n_x)``, and :func:`_roi_align`
    sums those cells' channel vectors with one :class:`_WeightedGather` over the
    ``(N * H * W, C)`` feature rows. That is K x ph x pw x ~(n + 1)^2 x C multiply-adds
    (~45 M at the sizes above, about 7 cells per bin), no more than torchvision's kernel
    does, vectorised over channels; the weights cost O(K x ph x H) to build. Python loops
    over nothing.
    """
    height, width = size
    ys, xs, ny, nx = _sampling_grid(rois, spatial_scale, ph, pw, sampling_ratio, aligned)
    rows, wy = _axis_weights(ys, ny, height)  # (K, ph, Ly)
    cols, wx = _axis_weights(xs, nx, width)  # (K, pw, Lx)
    # torchvision divides each bin's sum by max(ny * nx, 1) once; so do we.
    count = (ny * nx).clamp(min=1).to(rois.dtype)[:, None, None, None, None]
    batch = rois[:, 0].long()[:, None, None, None, None]
    cell = (batch * height + rows[:, :, None, :, None]) * width + cols[:, None, :, None, :]
    weight = (wy[:, :, None, :, None] * wx[:, None, :, None, :]) / count  # (K, ph, pw, Ly, Lx)
    return _sparse_rows(cell, weight)


def _sparse_rows(cell: Tensor, weight: Tensor):
    """The entries of a sparse matrix, row by row, for :class:`_WeightedGather`: one row
    per index of the leading dimensions of ``cell``/``weight`` (in row-major order), its
    entries along the last two, entries of weight 0 dropped.

    Returns ``(rows, cols, offsets, weights)``.
    """
    num_bags, per_bag = math.prod(cell.shape[:-2]), cell.shape[-2] * cell.shape[-1]
    keep = (weight != 0).view(-1)
    entry = keep.nonzero().squeeze(1)  # flat positions, row-major
    counts = keep.view(num_bags, per_bag).sum(1)
    offsets = torch.cumsum(counts, 0) - counts
    rows = entry // max(per_bag, 1)
    return rows, cell.reshape(-1)[entry], offsets, weight.reshape(-1)[entry]


def _roi_align_max_plan(rois: Tensor, size, ph, pw, spatial_scale, sampling_ratio, aligned):
    """RoIAlign with a max over each bin's sampling points ("RoIAlign max"): the plan.

    A maximum is not linear, so the points cannot be merged as in the average: every
    point (bin i, j; point s, t) becomes its own row of the sparse matrix, its four
    bilinear taps, so one :class:`_WeightedGather` gives a ``(K, ph, pw, G * G', C)``
    tensor of point values, and :func:`_roi_align` takes the maximum over the points.
    Returns the sparse rows and ``used``, ``(K, G * G')``: which of the (padded) points
    each RoI has (with an adaptive ratio RoIs have different grids; the others are set to
    -inf before the maximum, and a bin with no points at all outputs 0).
    """
    height, width = size
    ys, xs, ny, nx = _sampling_grid(rois, spatial_scale, ph, pw, sampling_ratio, aligned)
    y_lo, y_hi, wy_lo, wy_hi = _bilinear_taps(ys, height)  # (K, ph, G)
    x_lo, x_hi, wx_lo, wx_hi = _bilinear_taps(xs, width)  # (K, pw, G')
    rows = torch.stack((y_lo, y_hi), -1)[:, :, None, :, None, :, None]  # (K,ph,1,G,1,2,1)
    cols = torch.stack((x_lo, x_hi), -1)[:, None, :, None, :, None, :]  # (K,1,pw,1,G',1,2)
    wy = torch.stack((wy_lo, wy_hi), -1)[:, :, None, :, None, :, None]
    wx = torch.stack((wx_lo, wx_hi), -1)[:, None, :, None, :, None, :]
    batch = rois[:, 0].long()[:, None, None, None, None, None, None]
    cell = (batch * height + rows) * width + cols  # (K, ph, pw, G, G', 2, 2)
    used_y = torch.arange(ys.shape[2], device=rois.device)[None, :] < ny[:, None]  # (K, G)
    used_x = torch.arange(xs.shape[2], device=rois.device)[None, :] < nx[:, None]  # (K, G')
    used = (used_y[:, :, None] & used_x[:, None, :]).flatten(1)
    return _sparse_rows(cell, wy * wx), used


def _roi_align(input, rois, ph, pw, spatial_scale, sampling_ratio, aligned, mode) -> Tensor:
    """:func:`roi_align` on checked arguments, ``rois`` a (K, 5) tensor."""
    num_rois, channels = rois.shape[0], input.shape[1]
    plan = _roi_align_avg_plan if mode == "avg" else _roi_align_max_plan
    with _cpu_threads(input.device, limit=1):
        sparse = plan(rois, input.shape[2:], ph, pw, spatial_scale, sampling_ratio, aligned)
    if mode == "avg":
        out = _WeightedGather.apply(_feature_rows(input), *sparse)  # (K * ph * pw, C)
        return _bags_to_output(out, num_rois, ph, pw)
    (rows, cols, offsets, weights), used = sparse
    points = _WeightedGather.apply(_feature_rows(input), rows, cols, offsets, weights)
    points = points.view(num_rois, ph, pw, used.shape[1], channels)
    best = _PointMax.apply(points, used)  # (K, ph, pw, C)
    return _bags_to_output(best.view(-1, channels), num_rois, ph, pw)


class _PointMax(torch.autograd.Function):
    """The maximum over each bin's sampling points, gradient to the first winning point.

    ``points`` is ``(K, ph, pw, P, C)``, ``used`` ``(K, P)`` the points each RoI has;
    bins of a RoI without points output 0. The first winner (in the points' row-major
    order, as ``torch.max`` picks it) is found without ``argmax``, which measured
    ~100x slower than ``amax`` over this short, strided dimension on CPU: the largest of
    ``P - p`` over the points p that equal the maximum.
    """

    @staticmethod
    def forward(ctx, points: Tensor, used: Tensor) -> Tensor:
        num_points = points.shape[3]
        any_point = used.any(1)[:, None, None, None]  # (K, 1, 1, 1)
        if num_points == 0:  # no RoI has any point (e.g. only reversed aligned boxes)
            ctx.save_for_backward(None)
            ctx.num_points = 0
            return points.new_zeros(points.shape[:3] + points.shape[4:])
        points = points.masked_fill(~used[:, None, None, :, None], -math.inf)
        best = points.amax(dim=3)
        countdown = torch.arange(num_points, 0, -1, device=points.device, dtype=torch.int16)
        hits = torch.where(points == best[:, :, :, None], countdown[:, None], 0)
        first = num_points - hits.amax(dim=3)  # (K, ph, pw, C) int16
        ctx.save_for_backward(torch.where(any_point, first, -1))
        ctx.num_points = num_points
        return torch.where(any_point, best, 0.0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (first,) = ctx.saved_tensors
        if ctx.num_points == 0:
            return grad[:, :, :, None, :].expand(*grad.shape[:3], 0, grad.shape[3]), None
        point = torch.arange(ctx.num_points, device=grad.device, dtype=torch.int16)
        winner = point[:, None] == first[:, :, :, None, :]  # (K, ph, pw, P, C)
        return torch.where(winner, grad[:, :, :, None, :], 0.0), None


def roi_align(
    input: Tensor,
    boxes: Boxes,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    mode: str = "avg",
) -> Tensor:
    """RoIAlign, Mask R-CNN section 3: bilinear sampling without any quantisation.

    The RoI, scaled to the map (and shifted by -0.5 cell when ``aligned``), is cut into
    ``ph x pw`` equal bins at fractional positions; each bin is sampled at ``n_y x n_x``
    regular points (``sampling_ratio`` per side, or ``ceil(roi_size / bins)`` per side
    when ``sampling_ratio <= 0``, which differs by RoI), each point's value is the
    bilinear interpolation of the four nearest cells, and the bin's output is the mean
    of its points (``mode="avg"``, the paper's RoIAlign and torchvision's):

        y[k, c, i, j] = 1 / (n_y n_x) * sum over points p of bin (i, j) of
                        sum over cells (r, s) of  b_y(p, r) b_x(p, s) x[b_k, c, r, s]

    with ``b(p, r) = max(0, 1 - |p - r|)`` the bilinear weights (Mask R-CNN Figure 3),
    or their maximum (``mode="max"``, "RoIAlign max" in Mask R-CNN Table 2(c)). Points
    more than one cell outside the map read 0; see :func:`_bilinear_taps` for the border
    rules and :func:`roi_align_sampling_points` to see the points.

    Taught in chapter 06 ("RoIAlign"). How it is computed: :func:`_roi_align_avg_plan`
    (one sparse-times-dense product) and :func:`_roi_align_max_plan`.

    Args:
        input: ``(N, C, H, W)`` feature maps.
        boxes: ``(K, 5)`` tensor of (batch_index, x1, y1, x2, y2), or a list of ``(L_i,
            4)`` tensors, one per image; in image coordinates.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: 1 / stride.
        sampling_ratio: points per bin side; <= 0 for adaptive.
        aligned: shift the box by -0.5 cell first (Detectron2's correction). False
            keeps the original behaviour, which also forces the RoI to be at least one
            cell wide and tall.
        mode: "avg" or "max" over each bin's points.

    Returns:
        ``(K, C, ph, pw)``. With ``mode="avg"`` equals ``torchvision.ops.roi_align``,
        forward and backward, up to float rounding (the sums run in another order) for
        finite inputs. (torchvision also multiplies a nan or inf cell by a weight 0 where a
        point sits exactly on a cell or outside the map, making the output nan; we skip
        cells of weight 0.) A bin with no points (a reversed box with ``aligned=True``)
        outputs 0.
    """
    fn = "roi_align"
    _check_input(fn, input)
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    sampling_ratio = _check_sampling_ratio(fn, sampling_ratio)
    mode = _check_mode(fn, mode)
    with _cpu_threads(input.device):
        rois = _rois_from_boxes(fn, boxes, input)
        return _roi_align(input, rois, ph, pw, spatial_scale, sampling_ratio, bool(aligned), mode)


def roi_warp(
    input: Tensor,
    boxes: Boxes,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    mode: str = "avg",
    aligned: bool = False,
) -> Tensor:
    """RoIWarp: RoIPool's rounded box, sampled bilinearly like RoIAlign.

    Mask R-CNN Table 2(c) compares RoIPool, RoIWarp and RoIAlign and explains (section
    3): RoIWarp, from Dai et al.'s MNC, "adopts bilinear resampling" but "overlooked the
    alignment issue and was implemented ... as quantizing RoI just like RoIPool", and so
    performs on par with RoIPool. Precisely, what we implement is

        roi_warp(x, boxes) = roi_align(x, round(boxes * spatial_scale), spatial_scale=1)

    the corners rounded to whole cells exactly as :func:`roi_pool` rounds them (halves
    away from zero), then everything else as :func:`roi_align` with the same output size,
    sampling ratio, mode and ``aligned``: no second quantisation into bins. So a box
    whose corners already lie on the grid gives exactly RoIAlign's output, and the gap
    between the two rows of Table 2(c) measures the first quantisation alone.

    Why not a copy of MNC's layer: MNC's Caffe kernel samples one point per bin, at the
    bin's top-left corner, so it differs from RoIAlign in three ways at once (rounding,
    sample count, sample position), and the paper's "RoIWarp avg/max" rows need several
    points per bin to average or max over. The default ``sampling_ratio=2`` is the
    paper's "four regular locations" per bin.

    Taught in chapter 06 ("RoIAlign").

    Args:
        input, boxes, output_size, spatial_scale: as in :func:`roi_align`.
        sampling_ratio: points per bin side (default 2); <= 0 for adaptive, counted on
            the rounded box.
        mode: "avg" or "max" over each bin's points.
        aligned: passed to RoIAlign for the rounded box (default False, the setting of
            the Mask R-CNN paper's experiments).

    Returns:
        ``(K, C, ph, pw)``; gradients flow to the input as in :func:`roi_align`.
    """
    fn = "roi_warp"
    _check_input(fn, input)
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    sampling_ratio = _check_sampling_ratio(fn, sampling_ratio)
    mode = _check_mode(fn, mode)
    with _cpu_threads(input.device):
        rois = _rois_from_boxes(fn, boxes, input)
        scale = torch.tensor(spatial_scale, dtype=rois.dtype, device=rois.device)
        rounded = torch.cat((rois[:, :1], _round_half_away(rois[:, 1:] * scale)), 1)
        return _roi_align(input, rounded, ph, pw, 1.0, sampling_ratio, bool(aligned), mode)


def roi_align_sampling_points(
    box: Tensor | Sequence[float],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Where RoIAlign samples one box: the points to draw over a feature grid.

    Taught in chapter 06: with :func:`roi_pool_cells` it shows that RoIAlign's points
    follow the box continuously (x = 1.1 and 2.2 at stride 16 give points 0.069 cell
    apart) where RoIPool's cells jump.

    Args:
        box: one box (x1, y1, x2, y2) in image coordinates (numbers are taken as float32).
        output_size, spatial_scale, sampling_ratio, aligned: as in :func:`roi_align`.

    Returns:
        ``(ph, pw, n_y, n_x, 2)`` sample coordinates ``(x, y)`` on the feature map, in the
        coordinates in which cell (r, c) is centred at (c, r) and spans [c - 0.5, c + 0.5];
        point (s, t) of bin (i, j) is at ``[i, j, s, t]``. These are the positions before
        the border rules of :func:`_bilinear_taps` (a point more than a cell outside the
        map reads 0), computed by the same code as :func:`roi_align`.
    """
    fn = "roi_align_sampling_points"
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    sampling_ratio = _check_sampling_ratio(fn, sampling_ratio)
    roi = _single_box(fn, box)
    ys, xs, ny, nx = _sampling_grid(roi, spatial_scale, ph, pw, sampling_ratio, bool(aligned))
    ys, xs = ys[0, :, : int(ny[0])], xs[0, :, : int(nx[0])]  # (ph, n_y), (pw, n_x)
    n_y, n_x = ys.shape[1], xs.shape[1]
    grid_x = xs[None, :, None, :].expand(ph, pw, n_y, n_x)
    grid_y = ys[:, None, :, None].expand(ph, pw, n_y, n_x)
    return torch.stack((grid_x, grid_y), dim=-1)


def bilinear_sample(feature: Tensor, y: float, x: float) -> Tensor:
    """The ``(C,)`` value of a ``(C, H, W)`` map at the fractional point (x, y), cell (r, c)
    centred at (c, r): the four cells around the point weighted by ``(1 - |y - r|)(1 -
    |x - c|)`` (Mask R-CNN Figure 3). Border rules as in torchvision: a point more than one
    cell outside the map reads 0; otherwise it is clamped onto the map. One point at a
    time, for :func:`roi_align_reference` and for reading; taught in chapter 06."""
    height, width = feature.shape[1:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return feature.new_zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    r0, c0 = int(y), int(x)
    r1, c1 = r0 + 1, c0 + 1
    if r0 >= height - 1:
        r0 = r1 = height - 1
        y = float(r0)
    if c0 >= width - 1:
        c0 = c1 = width - 1
        x = float(c0)
    dy, dx = y - r0, x - c0
    return (
        (1 - dy) * (1 - dx) * feature[:, r0, c0]
        + (1 - dy) * dx * feature[:, r0, c1]
        + dy * (1 - dx) * feature[:, r1, c0]
        + dy * dx * feature[:, r1, c1]
    )


def roi_align_reference(
    input: Tensor,
    boxes: Boxes,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    mode: str = "avg",
) -> Tensor:
    """RoIAlign written as Mask R-CNN section 3 defines it, one RoI, bin and point at a time.

    The readable definition beside :func:`roi_align`, whose sparse sampling plans are hard
    to learn from: no rounding anywhere; each of the ``ph x pw`` equal bins is sampled at
    ``n_y x n_x`` regular points, each point read by bilinear interpolation
    (:func:`bilinear_sample`), and the bin outputs their mean (``mode="avg"``) or maximum
    (``"max"``). Equal to :func:`roi_align` and, for "avg", to
    ``torchvision.ops.roi_align``, forward and backward, up to float rounding
    (tests/test_roi_ops.py); hundreds of times slower. Taught in chapter 06 before the
    fast version's speed.

    Args and returns: as :func:`roi_align`.
    """
    fn = "roi_align_reference"
    _check_input(fn, input)
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    sampling_ratio = _check_sampling_ratio(fn, sampling_ratio)
    mode = _check_mode(fn, mode)
    rois = _rois_from_boxes(fn, boxes, input)
    offset = 0.5 if aligned else 0.0  # the half-pixel correction
    rows = []
    for roi in rois.tolist():
        feature = input[int(roi[0])]
        x1, y1, x2, y2 = (v * spatial_scale - offset for v in roi[1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:  # the original forces at least one cell
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_w, bin_h = roi_w / pw, roi_h / ph
        # points per bin side: fixed, or about one per cell ("adaptive")
        n_y = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_h), 0)
        n_x = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_w), 0)
        bins = []
        for i in range(ph):
            for j in range(pw):
                points = [
                    bilinear_sample(
                        feature,
                        y1 + i * bin_h + (s + 0.5) * bin_h / n_y,
                        x1 + j * bin_w + (t + 0.5) * bin_w / n_x,
                    )
                    for s in range(n_y)
                    for t in range(n_x)
                ]
                if not points:  # a reversed aligned box has no points
                    bins.append(feature.new_zeros(feature.shape[0]))
                elif mode == "avg":
                    bins.append(torch.stack(points).mean(0))
                else:  # the gradient goes to the first winning point
                    bins.append(torch.stack(points).max(0).values)
        rows.append(torch.stack(bins, 1).view(-1, ph, pw))
    if not rows:
        return input.new_zeros((0, input.shape[1], ph, pw))
    return torch.stack(rows)


# ----------------------------------------------------------------------------------------
# The switch: Mask R-CNN Table 2(c) as one config field.
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoIOp:
    """One RoI layer of Mask R-CNN Table 2(c), callable as
    ``op(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=2)``.

    Built by :func:`get_roi_op`; a plain frozen dataclass so that a model config can
    hold and print it. ``sampling_ratio`` is ignored by "roipool" (it has no sampling
    points); ``aligned`` applies to the RoIWarp and RoIAlign rows.
    """

    name: str
    aligned: bool = False

    def __call__(
        self,
        input: Tensor,
        boxes: Boxes,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 2,
    ) -> Tensor:
        if self.name == "roipool":
            return roi_pool(input, boxes, output_size, spatial_scale)
        layer, mode = self.name.split("_")
        fn = roi_warp if layer == "roiwarp" else roi_align
        return fn(
            input,
            boxes,
            output_size,
            spatial_scale,
            sampling_ratio=sampling_ratio,
            aligned=self.aligned,
            mode=mode,
        )


def get_roi_op(name: str, aligned: bool = False) -> Callable[..., Tensor]:
    """The RoI layer called ``name``, one of :data:`ROI_OP_NAMES`: "roipool",
    "roiwarp_max", "roiwarp_avg", "roialign_max", "roialign_avg" (the rows of Mask R-CNN
    Table 2(c)).

    Returns a :class:`RoIOp`, a callable ``(input, boxes, output_size, spatial_scale,
    sampling_ratio) -> (K, C, ph, pw)``, so the later chapters' heads take the RoI layer
    as a config string. ``aligned`` is passed to RoIWarp/RoIAlign; the paper's
    experiments ran without the half-pixel shift (False, the default, as in torchvision's
    Mask R-CNN). Taught in chapter 06 ("RoIAlign").
    """
    if name not in ROI_OP_NAMES:
        # "roialign" most likely means the published (average) version.
        close = [n for n in ROI_OP_NAMES if isinstance(name, str) and name and n.startswith(name)]
        close.sort(key=lambda n: not n.endswith("_avg"))
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"get_roi_op: unknown RoI layer {name!r}; choose one of {ROI_OP_NAMES}.{hint}"
        )
    return RoIOp(name, bool(aligned))
