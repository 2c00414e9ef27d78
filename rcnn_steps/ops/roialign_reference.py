"""RoIAlign written as Mask R-CNN section 3 defines it, one RoI, bin and point at a time.

:func:`roi_align_reference` cuts each RoI into equal bins with no rounding anywhere,
samples each bin at regular points, reads each point by bilinear interpolation
(:func:`bilinear_sample`, Mask R-CNN Figure 3) and outputs their mean or maximum. The
fast :func:`~rcnn_steps.ops.roialign.roi_align` is one sparse weighted gather and does not
read like the paper; this does, and chapter 06 ("RoIAlign") teaches it first.
``tests/test_roi_ops.py`` checks the two equal to each other and, for "avg", to
``torchvision.ops.roi_align``, forward and backward, up to float rounding; this one is
hundreds of times slower. :mod:`~rcnn_steps.ops.roialign` re-exports both names.
Arguments: see :mod:`~rcnn_steps.ops.roi_checks`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rcnn_steps.ops.roi_checks import (
    Boxes,
    _check_input,
    _check_mode,
    _check_sampling_ratio,
    _check_scale,
    _pair,
    _rois_from_boxes,
)

__all__ = ["bilinear_sample", "roi_align_reference"]


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
