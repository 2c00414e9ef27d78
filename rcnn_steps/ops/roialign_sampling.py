"""Where RoIAlign reads (Mask R-CNN section 3): its bins and sampling points on the map,
and the bilinear taps that read each point.

A RoI, scaled to the map (and shifted by -0.5 cell when ``aligned``), is cut into
``ph x pw`` equal bins at fractional positions, each bin sampled at ``n x n`` regular
points (:func:`_sampling_grid`: separable, one 1-D grid per axis), and each point read from
its nearest cells with bilinear weights under torchvision's border rules
(:func:`_bilinear_taps`). Coordinates are those in which cell ``(r, c)`` has its centre at
``(x, y) = (c, r)``.

:func:`~rcnn_steps.ops.roialign.roi_align` and :func:`~rcnn_steps.ops.roialign.roi_warp`
build their sparse sampling plans from these; :func:`roi_align_sampling_points` and
:func:`roi_align_bins` show one box's points and bins, computed by the same code, to draw
over a feature grid beside RoIPool's cells
(:func:`~rcnn_steps.ops.roipool.roi_pool_cells`). Taught in chapter 06 ("RoIAlign");
:mod:`~rcnn_steps.ops.roialign` re-exports the two. Arguments: see
:mod:`~rcnn_steps.ops.roi_checks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rcnn_steps.ops.roi_checks import _check_sampling_ratio, _check_scale, _pair, _single_box

__all__ = ["roi_align_bins", "roi_align_sampling_points"]


def _scaled_roi(rois: Tensor, spatial_scale: float, aligned: bool):
    """RoIAlign's view of each RoI on the map: its top-left corner ``(x1', y1')`` and size
    ``(w, h)`` in cells, each ``(K,)`` in the RoIs' dtype. ``x1' = x1 * scale - o`` (``o =
    0.5`` when aligned, else 0) and ``w = x2' - x1'``, forced >= 1 when not aligned (so a
    malformed box becomes one cell), as torchvision's kernel computes them."""
    scale = torch.tensor(spatial_scale, dtype=rois.dtype, device=rois.device)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    return x1, y1, roi_w, roi_h


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
    x1, y1, roi_w, roi_h = _scaled_roi(rois, spatial_scale, aligned)
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


def roi_align_bins(
    box: Tensor | Sequence[float],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign's bins of one box: equal, fractional rectangles, nothing rounded.

    The counterpart of :func:`~rcnn_steps.ops.roipool.roi_pool_cells` (RoIPool's bins,
    snapped to whole cells): chapter 06 draws the two side by side, with the sampling
    points (:func:`roi_align_sampling_points`) that fall inside these bins. Bin column j
    spans ``[x1' + j w / pw, x1' + (j + 1) w / pw]`` with ``x1'`` and ``w`` the box scaled
    to the map as :func:`roi_align` scales it (shifted by -0.5 cell when ``aligned``; at
    least one cell wide and tall when not).

    Args:
        box: one box (x1, y1, x2, y2) in image coordinates (numbers are taken as float32).
        output_size, spatial_scale, aligned: as in :func:`roi_align`.

    Returns:
        ``(ph, pw, 4)`` bin rectangles ``(x1, y1, x2, y2)`` on the feature map, in the
        coordinates of :func:`roi_align_sampling_points` (cell ``(r, c)`` centred at
        ``(c, r)``).
    """
    fn = "roi_align_bins"
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    roi = _single_box(fn, box)
    x1, y1, roi_w, roi_h = (v[0] for v in _scaled_roi(roi, spatial_scale, bool(aligned)))
    edges = []
    for start, size, bins in ((x1, roi_w, pw), (y1, roi_h, ph)):
        index = torch.arange(bins + 1, dtype=roi.dtype)
        edges.append(start + index * (size / bins))  # (bins + 1,)
    xs, ys = edges
    return torch.stack(
        (
            xs[None, :-1].expand(ph, pw),
            ys[:-1, None].expand(ph, pw),
            xs[None, 1:].expand(ph, pw),
            ys[1:, None].expand(ph, pw),
        ),
        dim=-1,
    )
