"""One setting of the book's explorers (chapters 01, 04, 05, 06): each function computes
with the library and draws its answer, and :mod:`rcnn_steps.explorers` puts sliders on its
arguments. :func:`window_label` (chapter 01: one window of the sliding-window detector,
with :func:`window_positions`, the windows of the grid) asks ``crop_and_resize``;
:func:`anchor_labels` (chapter 04) the ``Matcher``; :func:`pyramid_level` (chapter 05) the
``LevelMapper``; :func:`roipool_vs_roialign` (chapter 06) ``roi_pool_cells`` and
``roi_align_bins``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from rcnn_steps.detectors.sliding_window import crop_and_resize
from rcnn_steps.modeling.matcher import Matcher, label_anchors
from rcnn_steps.modeling.poolers import LevelMapper
from rcnn_steps.ops import box_iou, roi_align_bins, roi_align_sampling_points, roi_pool_cells
from rcnn_steps.viz.feature_maps import draw_bins, draw_points, draw_region, feature_grid
from rcnn_steps.viz.images import draw_boxes, show_image
from rcnn_steps.viz.style import DPI, FONT_SIZE, _label_axes, _np

#: Colours of the anchor labels (chapter 04): positive, ignored, negative.
LABEL_COLOURS = {1: "lime", -1: "orange", 0: "red"}


def roipool_vs_roialign(
    x: float,
    y: float,
    w: float,
    h: float,
    *,
    grid_size: int = 8,
    output_size: int = 3,
    sampling_ratio: int = 2,
    axes: Sequence[Axes] | None = None,
) -> Sequence[Axes]:
    """One box on a ``grid_size``-square feature map, read by RoIPool (left) and RoIAlign
    (right): Mask R-CNN section 3's two quantisations against none.

    The box is given in feature cells, in RoIAlign's coordinates (cell ``(r, c)`` centred at
    ``(c, r)``): top-left ``(x, y)``, width ``w`` and height ``h``, fractions allowed. Left,
    RoIPool's ``output_size`` x ``output_size`` bins as the library computes them
    (:func:`rcnn_steps.ops.roi_pool_cells`: the corners rounded to cells, the bin edges
    rounded outwards), clipped to the map. Right, RoIAlign's equal fractional bins
    (:func:`rcnn_steps.ops.roi_align_bins`) and their ``sampling_ratio`` x
    ``sampling_ratio`` points (:func:`rcnn_steps.ops.roi_align_sampling_points`). Bin
    (i, j) has one colour on both sides, its points too; the box is dashed black. Returns
    the two axes.
    """
    if not (w > 0 and h > 0):
        raise ValueError(f"roipool_vs_roialign: w and h must be > 0 cells, got w={w}, h={h}.")
    box = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
    cells = roi_pool_cells(box, 1.0, output_size, feature_size=(grid_size, grid_size))
    bins = roi_align_bins(box, output_size, 1.0)
    points = roi_align_sampling_points(box, output_size, 1.0, sampling_ratio)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(6.4, 3.5), dpi=DPI)
    pool_ax, align_ax = axes
    colours = [plt.cm.tab10(i % 10) for i in range(cells.shape[0] * cells.shape[1])]
    for ax in axes:
        feature_grid(ax, size=grid_size)
        draw_region(ax, box, "black", linestyle="--", linewidth=1.2)
    draw_bins(pool_ax, cells, colours, linewidth=1.5)
    x0, y0 = int(cells[0, 0, 0]), int(cells[0, 0, 1])
    x1, y1 = int(cells[-1, -1, 2]) - 1, int(cells[-1, -1, 3]) - 1
    pool_ax.set_title(
        f"RoIPool: cells {x0}..{x1} x {y0}..{y1},\nbins snapped to whole cells", fontsize=FONT_SIZE
    )
    bin_points = points.reshape(len(colours), -1, 2)  # (bins, points of the bin, 2)
    for rect, bin_xy, colour in zip(bins.reshape(-1, 4), bin_points, colours, strict=True):
        draw_region(align_ax, rect, colour, linewidth=1.5)
        draw_points(align_ax, bin_xy, colour, size=10)
    bin_w, bin_h = float(bins[0, 0, 2] - bins[0, 0, 0]), float(bins[0, 0, 3] - bins[0, 0, 1])
    align_ax.set_title(
        f"RoIAlign: bins of {bin_w:.2f} x {bin_h:.2f} cells,\n"
        f"{sampling_ratio} x {sampling_ratio} sampling points each",
        fontsize=FONT_SIZE,
    )
    axes[0].figure.tight_layout()
    return axes


def anchor_labels(
    image: Any,
    gt_box: Any,
    anchors: torch.Tensor,
    high: float = 0.7,
    low: float = 0.3,
    *,
    allow_low_quality_matches: bool = True,
    axes: Sequence[Axes] | None = None,
) -> Sequence[Axes]:
    """Faster R-CNN's anchor labels (section 3.1.2) for one ground-truth box, at the IoU
    thresholds ``high`` (positive at or above) and ``low`` (negative below).

    The labels are the library's: :func:`rcnn_steps.ops.box_iou` of the box with every
    anchor, :class:`rcnn_steps.modeling.matcher.Matcher` and
    :func:`rcnn_steps.modeling.matcher.label_anchors`. Left, the image with the box
    (dashed white), every positive anchor (lime) and every ignored one (orange); the
    negatives, usually thousands, are only counted. Right, the IoU of every anchor that
    overlaps the box, one histogram per label, and the two thresholds: the positives below
    ``high`` are the low-quality rule's (the box's best anchors).

    Args:
        image: ``(3, H, W)`` in [0, 1].
        gt_box: ``(4,)`` xyxy in image pixels.
        anchors: ``(A, 4)`` xyxy anchors, e.g. from
            :class:`rcnn_steps.modeling.anchors.AnchorGenerator`.
        high, low: the Matcher's thresholds (0.7 and 0.3 in the paper); ``low <= high``.
        allow_low_quality_matches: the paper's second positive rule.

    Returns the two axes; the left title gives the three counts.
    """
    gt = torch.as_tensor(gt_box, dtype=anchors.dtype).reshape(1, 4)
    iou = box_iou(gt, anchors)  # (1, A)
    labels = label_anchors(Matcher(high, low, allow_low_quality_matches)(iou))
    iou = iou[0]
    counts = {label: int((labels == label).sum()) for label in LABEL_COLOURS}
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(6.6, 3.2), dpi=DPI)
    image_ax, hist_ax = axes
    show_image(image, ax=image_ax)
    for label in (-1, 1):  # the positives on top
        draw_boxes(image_ax, anchors[labels == label], colour=LABEL_COLOURS[label], linewidth=0.8)
    draw_boxes(image_ax, gt, colour="white", linestyle="--", linewidth=1.2)
    height, width = _np(image).shape[-2:]
    image_ax.set_xlim(-0.5, width - 0.5)  # anchors may stick out; keep the view on the image
    image_ax.set_ylim(height - 0.5, -0.5)
    image_ax.set_title(
        f"positive {counts[1]} (lime), ignored {counts[-1]}\n(orange), negative {counts[0]}",
        fontsize=FONT_SIZE,
    )
    overlapping = iou > 0
    edges = np.linspace(0.0, 1.0, 41)
    for label, name in ((0, "negative"), (-1, "ignored"), (1, "positive")):
        values = _np(iou[overlapping & (labels == label)])
        hist_ax.hist(values, bins=edges, color=LABEL_COLOURS[label], alpha=0.8, label=name)
    for threshold, name, side in ((low, "low", "right"), (high, "high", "left")):
        hist_ax.axvline(threshold, color="black", linestyle=":", linewidth=1.0)
        top = hist_ax.get_xaxis_transform()  # x in data, y in axes fractions
        hist_ax.text(threshold, 1.0, f" {name} {threshold:.2f} ", transform=top,
                     fontsize=FONT_SIZE, va="bottom", ha=side)  # fmt: skip
    hist_ax.set_yscale("log")
    hist_ax.set_ylim(0.5, 30 * hist_ax.get_ylim()[1])  # room for the legend above the bars
    hist_ax.legend(fontsize=FONT_SIZE, loc="upper right")
    _label_axes(hist_ax, "IoU with the box", "anchors (IoU > 0)", "")
    axes[0].figure.tight_layout()
    return axes


def pyramid_level(
    image: Any,
    side: float,
    *,
    canonical_size: float = 56,
    canonical_level: int = 4,
    levels: Sequence[int] = (2, 3, 4, 5),
    axes: Sequence[Axes] | None = None,
) -> Sequence[Axes]:
    """Which pyramid level FPN eq. (1) pools a RoI from, for a square box of ``side`` pixels
    centred on the image: ``k = floor(k0 + log2(sqrt(w h) / s0))``, clamped to ``levels``.

    The level is the library's (:class:`rcnn_steps.modeling.poolers.LevelMapper` with
    ``canonical_size`` s0 and ``canonical_level`` k0). One panel per level: the image with
    that level's grid of cells (stride ``2**k``) and the box; the panel of the chosen level
    is framed and says so, every title gives the box's side in that level's cells.

    Args:
        image: ``(3, H, W)`` in [0, 1] (the map of level k is ``H / 2**k`` cells high).
        side: the box's side in image pixels.
        canonical_size, canonical_level: s0 and k0 (the paper: 224 and 4; our ``cpu_fpn``
            preset: 56 and 4).
        levels: consecutive pyramid levels, finest first.

    Returns one axes per level.
    """
    levels = [int(k) for k in levels]
    if not levels or levels != list(range(levels[0], levels[0] + len(levels))):
        raise ValueError(f"pyramid_level: levels must be consecutive, finest first; got {levels}.")
    if not side > 0:
        raise ValueError(f"pyramid_level: side must be > 0 pixels, got {side!r}.")
    mapper = LevelMapper(levels[0], levels[-1], canonical_size, canonical_level)
    height, width = _np(image).shape[-2:]
    cx, cy = width / 2, height / 2
    box = torch.tensor([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]])
    chosen = int(mapper.level(box)[0])
    if axes is None:
        _, axes = plt.subplots(1, len(levels), figsize=(1.9 * len(levels), 2.4), dpi=DPI)
    for ax, k in zip(axes, levels, strict=True):
        stride = 2**k
        show_image(image, ax=ax)
        for line in np.arange(stride, max(height, width), stride) - 0.5:
            ax.axvline(line, color="white", linewidth=0.4, alpha=0.6)
            ax.axhline(line, color="white", linewidth=0.4, alpha=0.6)
        colour = "tab:red" if k == chosen else "yellow"
        draw_boxes(ax, box, colour=colour, linewidth=1.5)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        title = f"P{k}: {height // stride} x {width // stride}\nbox {side / stride:.2f} cells"
        if k == chosen:
            title += ", pooled here"
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:red")
                spine.set_linewidth(3.0)
        ax.set_title(title, fontsize=FONT_SIZE, color="tab:red" if k == chosen else "black")
    raw = canonical_level + np.log2(side / canonical_size)
    axes[0].figure.suptitle(
        f"k = floor({canonical_level} + log2({side:g} / {canonical_size:g})) = "
        f"floor({raw:.2f}), clamped to P{levels[0]}..P{levels[-1]}: P{chosen}",
        fontsize=FONT_SIZE,
    )
    axes[0].figure.tight_layout(rect=(0, 0, 1, 0.92))  # below the suptitle
    return axes


#: Colours of a window's label by the crop rule (chapter 01): object, in between, background.
WINDOW_COLOURS = {"object": "lime", "ignored": "orange", "background": "red"}


def window_positions(
    image_size: Sequence[int], width: float, height: float, stride: float
) -> torch.Tensor:
    """Every position of a ``width x height`` window slid over an image of ``(H, W)``
    pixels in steps of ``stride`` times its own side (``stride * width`` across,
    ``stride * height`` down), starting at the top-left corner: the sliding window of
    chapter 01 at any stride (its detector's is a quarter, :func:`window_label`).

    Returns ``(ny * nx, 4)`` float32 xyxy boxes, row-major (position ``(j, i)`` at index
    ``j * nx + i``), all inside the image.
    """
    img_h, img_w = (float(v) for v in image_size)
    if not (0 < width <= img_w and 0 < height <= img_h):
        raise ValueError(
            f"window_positions: a {width:g} x {height:g} px window does not fit in a "
            f"{img_w:g} x {img_h:g} image; use a smaller size"
        )
    if not 0 < stride <= 1:
        raise ValueError(f"window_positions: stride must be in (0, 1] window sides, got {stride}")
    step_x, step_y = stride * width, stride * height
    # the small tolerance keeps a last position that floating point puts a hair outside
    nx = int((img_w - width) / step_x + 1e-6) + 1
    ny = int((img_h - height) / step_y + 1e-6) + 1
    y1, x1 = torch.meshgrid(
        torch.arange(ny, dtype=torch.float32) * step_y,
        torch.arange(nx, dtype=torch.float32) * step_x,
        indexing="ij",
    )
    boxes = torch.stack([x1, y1, x1 + width, y1 + height], dim=-1).reshape(-1, 4)
    return boxes.clamp(max=torch.tensor([img_w, img_h, img_w, img_h]))


def window_label(
    image: Any,
    target: Mapping[str, Any],
    class_names: Sequence[str],
    x: float,
    y: float,
    size: float,
    ratio: float = 1.0,
    stride: float = 0.25,
    *,
    model: torch.nn.Module | None = None,
    positive_iou: float = 0.5,
    background_iou: float = 0.3,
    axes: Sequence[Axes] | None = None,
) -> Sequence[Axes]:
    """One window of a sliding-window detector (chapter 01): where it sits, what the
    classifier sees, what it should answer and, with ``model``, what it answers.

    The window is ``size * sqrt(ratio)`` wide and ``size / sqrt(ratio)`` tall
    (:class:`rcnn_steps.sliding_window.WindowConfig`'s convention) and sits at the
    position of the grid (:func:`window_positions`, steps of ``stride`` window sides)
    nearest to its top-left corner ``(x, y)``. Its label is the crop rule the classifier
    was trained with (:func:`rcnn_steps.sliding_window.make_crops`): the class of the
    object it overlaps most when that IoU is at least ``positive_iou``, background when
    it is below ``background_iou`` with every object, and neither in between (such crops
    are not trained on). Left, the image with its objects (dashed white), the centre of
    every window of the grid (dots) and the window in its label's colour
    (:data:`WINDOW_COLOURS`); the title counts the windows and gives, per object, the
    best IoU any of them reaches (a coarse grid misses objects). Middle, the crop as the
    classifier sees it (:func:`rcnn_steps.sliding_window.crop_and_resize`: warped to
    32 x 32, plus the shape channel). Right (with ``model``, a
    :class:`rcnn_steps.sliding_window.CropClassifier` in eval mode), its softmax over the
    classes, the label's class outlined.

    Args:
        image: ``(3, H, W)`` float in [0, 1].
        target: the image's ``{"boxes": (K, 4) xyxy, "labels": (K,)}``.
        class_names: names by label, background first.
        x, y: where to put the window's top-left corner, in pixels (it snaps to the grid).
        size, ratio: the window's size (sqrt of its area) in pixels, and width / height.
        stride: the step between windows, in window sides (the detector's: 0.25).

    Returns the axes (two, or three with ``model``); the middle one's x label names the label.
    """
    if model is not None and model.training:
        raise ValueError(
            "window_label: the classifier is in training mode; call model.eval() first"
        )
    if not 0 <= background_iou <= positive_iou <= 1:
        raise ValueError(
            f"window_label: need 0 <= background_iou <= positive_iou <= 1, got "
            f"{background_iou} and {positive_iou}"
        )
    img_h, img_w = image.shape[-2:]
    width, height = size * ratio**0.5, size / ratio**0.5
    windows = window_positions((img_h, img_w), width, height, stride)
    corners = windows[:, :2]
    window = windows[int(((corners - torch.tensor([x, y])) ** 2).sum(1).argmin())]
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
    labels = torch.as_tensor(target["labels"]).reshape(-1)
    iou = box_iou(window[None], boxes)[0] if len(boxes) else torch.zeros(0)
    best = int(iou.argmax()) if len(iou) else -1
    best_iou = float(iou[best]) if len(iou) else 0.0
    if best_iou >= positive_iou:
        kind, label = "object", int(labels[best])
        verdict = f"{class_names[label]} (IoU {best_iou:.2f} >= {positive_iou:g})"
    elif best_iou < background_iou:
        kind, label = "background", 0
        verdict = f"background (IoU {best_iou:.2f} < {background_iou:g})"
    else:
        kind, label = "ignored", None
        verdict = f"none (IoU {best_iou:.2f}: not trained on)"
    crop = crop_and_resize(torch.as_tensor(image, dtype=torch.float32), window[None].round())
    if axes is None:
        ratios = [1.2, 1.0] if model is None else [1.2, 1.0, 1.2]
        _, axes = plt.subplots(1, len(ratios), figsize=(2.9 * sum(ratios), 3.4), dpi=DPI,
                               gridspec_kw={"width_ratios": ratios})  # fmt: skip
    image_ax, crop_ax = axes[0], axes[1]
    show_image(image, ax=image_ax)
    centres = (windows[:, :2] + windows[:, 2:]) / 2
    image_ax.scatter(*_np(centres).T, s=2, color="white", alpha=0.5, linewidths=0)
    draw_boxes(image_ax, boxes, colour="white", linestyle="--", linewidth=1.0)
    if best_iou > 0:  # the object the label is decided by, in the label's colour
        draw_boxes(image_ax, boxes[best], colour=WINDOW_COLOURS[kind], linestyle="--")
    draw_boxes(image_ax, window, colour=WINDOW_COLOURS[kind], linewidth=2.0)
    image_ax.set_xlim(-0.5, img_w - 0.5)
    image_ax.set_ylim(img_h - 0.5, -0.5)
    reach = box_iou(windows, boxes).amax(0) if len(boxes) else torch.zeros(0)
    reached = [
        f"{class_names[k]} {v:.2f}" for k, v in zip(labels.tolist(), reach.tolist(), strict=True)
    ]
    step = f"{stride * width:.0f} x {stride * height:.0f}"
    image_ax.set_title(
        f"{len(windows)} windows of {width:.0f} x {height:.0f} px,\nstep {step} px\n"
        + textwrap.fill("best IoU: " + ", ".join(reached), 36),
        fontsize=FONT_SIZE,
    )
    show_image(crop[0, :3], ax=crop_ax)
    crop_ax.set_title(
        f"what the classifier sees: 32 x 32,\nshape channel {float(crop[0, 3, 0, 0]):+.1f}",
        fontsize=FONT_SIZE,
    )
    crop_ax.set_xlabel(
        f"label: {verdict}",
        fontsize=FONT_SIZE,
        color={"object": "green", "ignored": "darkorange", "background": "red"}[kind],
    )
    if model is not None:
        with torch.no_grad():
            probs = model(crop).softmax(1)[0]
        names = ["background", *class_names[1:]]
        bars = axes[2].barh(range(len(names)), _np(probs), color="tab:blue")
        if label is not None:
            bars[label].set_edgecolor("black")
            bars[label].set_linewidth(2.0)
        axes[2].set_yticks(range(len(names)), names)
        axes[2].invert_yaxis()
        axes[2].set_xlim(0, 1)
        top = int(probs.argmax())
        _label_axes(axes[2], "softmax score", "", f"answer: {names[top]} {float(probs[top]):.2f}")
    axes[0].figure.tight_layout()
    return axes
