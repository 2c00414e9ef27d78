"""RoIAlign (Mask R-CNN section 3) and RoIWarp: RoIs read by bilinear sampling.

- :func:`roi_align` removes both of RoIPool's quantisations
  (:mod:`~rcnn_steps.ops.roipool`): each bin is sampled at ``n x n`` regular points at
  their exact, fractional positions, each point is read by bilinear interpolation
  (:func:`roi_align_sampling_points`, :func:`bilinear_sample`), and the points are averaged
  (or max-pooled: ``mode="max"``, the "RoIAlign max" row of Mask R-CNN Table 2(c)).
- :func:`roi_warp` (Mask R-CNN Table 2(c), after Dai et al.'s MNC) is in between: it
  rounds the box like RoIPool but then samples it bilinearly like RoIAlign, so comparing
  it with RoIAlign isolates what the first quantisation costs.

RoIAlign samples at continuous coordinates in which cell ``(r, c)`` has its centre at
``(x, y) = (c, r)``; with ``aligned=True`` it first shifts the box by -0.5 cell so that box
corners are cell corners (the "half-pixel" correction of Detectron2, the right choice for
new models), with ``aligned=False`` (the Mask R-CNN paper's and torchvision's detection
models' setting) it does not.

Taught in chapter 06 ("RoIAlign").

The fast layers are vectorised PyTorch: one sparse weighted gather over the feature map
(:class:`_WeightedGather`), no Python loop over RoIs. Because they do not read like the
paper, :func:`roi_align_reference` beside them does, looping over RoIs, bins and sampling
points; the chapter teaches it first. ``tests/test_roi_ops.py`` checks :func:`roi_align`
against ``torchvision.ops.roi_align`` forward and backward (to rounding) and against the
reference, and ``benchmarks/bench_roi_ops.py`` times it against torchvision's compiled
kernels. How it is computed, and why that way, is in the docstring of
:func:`_roi_align_avg_plan`. Arguments, coordinates and CPU threads: see
:mod:`~rcnn_steps.ops.roi_checks`.

Where the points and bins are, and the bilinear taps that read them, is
:mod:`~rcnn_steps.ops.roialign_sampling` (with :func:`roi_align_sampling_points` and
:func:`roi_align_bins`, to draw them); the reference and :func:`bilinear_sample` are
:mod:`~rcnn_steps.ops.roialign_reference`. This module re-exports their public names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rcnn_steps.ops.roi_checks import (
    Boxes,
    _check_input,
    _check_mode,
    _check_sampling_ratio,
    _check_scale,
    _cpu_threads,
    _pair,
    _rois_from_boxes,
)
from rcnn_steps.ops.roialign_reference import bilinear_sample, roi_align_reference
from rcnn_steps.ops.roialign_sampling import (
    _bilinear_taps,
    _sampling_grid,
    _scaled_roi,  # noqa: F401 (re-exported: its old home)
    roi_align_bins,
    roi_align_sampling_points,
)
from rcnn_steps.ops.roipool import _round_half_away

__all__ = [
    "bilinear_sample",
    "roi_align",
    "roi_align_bins",
    "roi_align_reference",
    "roi_align_sampling_points",
    "roi_warp",
]

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

    With ``bins=(ph, pw)`` the rows are RoIAlign's bins, RoI by RoI, and the output is
    torchvision's ``(K, C, ph, pw)`` (:func:`_gather_into_maps`) rather than ``(K * ph *
    pw, C)``.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        rows: Tensor,
        cols: Tensor,
        offsets: Tensor,
        weights: Tensor,
        bins: tuple[int, int] | None = None,
    ):
        ctx.save_for_backward(rows, cols, weights)
        ctx.num_x_rows = x.shape[0]
        ctx.bins = bins
        if bins is not None:
            return _gather_into_maps(x, cols, offsets, weights, *bins)
        return F.embedding_bag(cols, x, offsets, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        rows, cols, weights = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if ctx.bins is not None:  # (K, C, ph, pw) back to one row per bin
            grad_out = grad_out.permute(0, 2, 3, 1).reshape(-1, grad_out.shape[1])
        # S^T row by row: the entries grouped by column, in row order within a column.
        with _cpu_threads(cols.device, limit=1):
            order = torch.argsort(cols, stable=True)
            col_counts = torch.bincount(cols, minlength=ctx.num_x_rows)
            col_offsets = torch.cumsum(col_counts, 0) - col_counts
            transposed = (cols[order], rows[order], col_offsets, weights[order])
        with _cpu_threads(cols.device):
            grad_x = _WeightedGather.apply(grad_out.contiguous(), *transposed)
        return grad_x, None, None, None, None, None


#: RoIs per ``embedding_bag`` call in :func:`_gather_into_maps`: 8 RoIs of 14 x 14 bins
#: and 256 channels are 1.6 MB of rows, transposed into the output while still in the
#: core's cache. Measured (one thread, 512 RoIs, 14 x 14, adaptive sampling): 8, 32, 128
#: and 512 RoIs per call 126, 129, 141 and 156 ms.
GATHER_CHUNK_ROIS = 8


def _gather_into_maps(x: Tensor, cols: Tensor, offsets: Tensor, weights: Tensor, ph, pw):
    """:class:`_WeightedGather`'s forward for RoIAlign: the ``(K * ph * pw, C)`` bins of
    ``F.embedding_bag`` written as torchvision's ``(K, C, ph, pw)``.

    The same sums as one ``embedding_bag`` call followed by a transpose, bit for bit (each
    bin is summed in one call, in the same order), but done ``GATHER_CHUNK_ROIS`` RoIs at
    a time into the output allocated once: the one-call version allocates and writes the
    whole ``(K * ph * pw, C)`` rows first, a second output-sized buffer (100 MB at K =
    512, 14 x 14, C = 256), and its transposing copy reads them back from memory; at that
    size that cost a sixth of RoIAlign's forward time (benchmarks/bench_roi_ops.py).
    """
    bins = ph * pw
    num_rois = offsets.shape[0] // bins
    out = x.new_empty((num_rois, x.shape[1], ph, pw))
    # The first entry of each chunk, and the end of the last (one host synchronisation).
    bounds = offsets[:: bins * GATHER_CHUNK_ROIS].tolist() + [cols.shape[0]]
    for chunk, k0 in enumerate(range(0, num_rois, GATHER_CHUNK_ROIS)):
        k1 = min(k0 + GATHER_CHUNK_ROIS, num_rois)
        e0, e1 = bounds[chunk], bounds[chunk + 1]
        part = F.embedding_bag(cols[e0:e1], x, offsets[k0 * bins : k1 * bins] - e0,
                               mode="sum", per_sample_weights=weights[e0:e1])  # fmt: skip
        out[k0:k1] = part.view(k1 - k0, ph, pw, -1).permute(0, 3, 1, 2)
    return out


def _feature_rows(input: Tensor) -> Tensor:
    """``(N, C, H, W)`` to ``(N * H * W, C)``: one row per cell, channels contiguous, so
    each gathered cell is one contiguous vector (free if the input is channels_last)."""
    return input.permute(0, 2, 3, 1).reshape(-1, input.shape[1])


def _bags_to_output(out: Tensor, num_rois: int, ph: int, pw: int) -> Tensor:
    """``(K * ph * pw, C)`` bins back to torchvision's contiguous ``(K, C, ph, pw)``."""
    return out.view(num_rois, ph, pw, out.shape[1]).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------
# RoIAlign and RoIWarp (chapter 06)
# ----------------------------------------------------------------------------------------


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
        return _WeightedGather.apply(_feature_rows(input), *sparse, (ph, pw))  # (K, C, ph, pw)
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
