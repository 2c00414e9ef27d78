"""Drawing: images with boxes, labels and scores, masks as coloured overlays, keypoints with
their skeleton, and sets of anchors or proposals (first used in chapter 00); measurements
as pictures (curves, histograms, precision/recall and training curves, ablation tables as
bars with the spread over seeds, AP against seconds per image); and feature grids with
RoI bins and sampling points (chapters 03 and 06). A chapter computes what it shows with
the library and calls one of these to draw it. Four views compute for themselves, because
:mod:`rcnn_steps.explorers` puts sliders on their arguments: :func:`window_label`
(chapter 01), :func:`roipool_vs_roialign` (chapter 06), :func:`anchor_labels` (chapter 04)
and :func:`pyramid_level` (chapter 05) ask the library (``crop_and_resize``,
``roi_pool_cells``, ``roi_align_bins``, ``Matcher``, ``LevelMapper``) and draw its answer
for one setting.

Every function draws onto a matplotlib ``Axes`` (made for you when ``ax`` is None) and
returns it, so chapters can lay several views side by side. Figures are kept small because
they are committed inside the notebooks, but sharp and readable: every figure made here is
drawn at :data:`DPI` with text of at least :data:`FONT_SIZE` pt (:data:`BOOK_STYLE` gives a
chapter's own ``plt.subplots`` the same, through :func:`use_book_style`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from rcnn_steps.detectors.sliding_window import crop_and_resize
from rcnn_steps.modeling.keypoint_head import heatmap_entropy
from rcnn_steps.modeling.matcher import Matcher, label_anchors
from rcnn_steps.modeling.poolers import LevelMapper
from rcnn_steps.ops import box_iou, roi_align_bins, roi_align_sampling_points, roi_pool_cells
from rcnn_steps.utils import stage_changes

__all__ = [
    "BOOK_STYLE",
    "CAPTION_SIZE",
    "DPI",
    "FONT_SIZE",
    "TITLE_SIZE",
    "LABEL_COLOURS",
    "WINDOW_COLOURS",
    "ablation_bars",
    "anchor_labels",
    "ap_vs_seconds",
    "before_after",
    "class_colour",
    "curves",
    "draw_bins",
    "draw_boxes",
    "draw_detections",
    "draw_instances",
    "draw_keypoint_heatmaps",
    "draw_keypoint_targets",
    "draw_keypoints",
    "draw_mask_target",
    "draw_masks",
    "draw_points",
    "draw_region",
    "draw_stages",
    "draw_target",
    "effect_forest",
    "effect_sentence",
    "failure_gallery",
    "feature_grid",
    "heatmap",
    "histogram",
    "image_grid",
    "plot_mask_probabilities",
    "plot_stage_times",
    "pr_curve",
    "pyramid_level",
    "recall_curves",
    "roipool_vs_roialign",
    "show_image",
    "training_curves",
    "use_book_style",
    "value_grid",
    "window_label",
    "window_positions",
]

#: The book's figure defaults, in one place (issue 26: dpi >= 110, labels >= 9 pt). Every
#: figure this module makes uses them; a chapter's own figures get them from BOOK_STYLE.
DPI = 110
#: Ticks, axis labels, legends and the text of charts, in points.
FONT_SIZE = 9
#: Titles, in points.
TITLE_SIZE = 10
#: Text drawn inside an image or a grid cell (box captions, cell values), in points:
#: smaller than the labels, because at 9 pt a caption on a 128-px image covers the object
#: it names and a number overflows its cell.
CAPTION_SIZE = 7
#: The same defaults as matplotlib settings (rcParams), for figures a chapter makes itself.
BOOK_STYLE: dict[str, Any] = {
    "figure.dpi": DPI,
    "font.size": FONT_SIZE,
    "axes.labelsize": FONT_SIZE,
    "axes.titlesize": TITLE_SIZE,
    "xtick.labelsize": FONT_SIZE,
    "ytick.labelsize": FONT_SIZE,
    "legend.fontsize": FONT_SIZE,
    "legend.title_fontsize": FONT_SIZE,
    "figure.titlesize": TITLE_SIZE,
}


def use_book_style() -> None:
    """Make :data:`BOOK_STYLE` matplotlib's defaults for the rest of the session (a
    chapter's first cell calls it, so its own ``plt.subplots`` figures match this
    module's). ``with plt.rc_context(viz.BOOK_STYLE):`` does the same for one block."""
    plt.rcParams.update(BOOK_STYLE)


# tab10 without grey, so that every class colour stands out from a grey-ish background
_PALETTE = [plt.get_cmap("tab10")(i)[:3] for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]


def class_colour(label: int) -> tuple[float, float, float]:
    """A fixed RGB colour (0..1) per class label, the same in every chapter."""
    return _PALETTE[int(label) % len(_PALETTE)]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _axes(ax: Axes | None, size: float = 3.0) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=(size, size), dpi=DPI)
    return ax


def show_image(image: torch.Tensor | np.ndarray, ax: Axes | None = None, title: str = "") -> Axes:
    """Show an image given as (3, H, W) float in [0, 1] (a tensor) or (H, W, 3) array."""
    ax = _axes(ax)
    img = _np(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = np.clip(img, 0.0, 1.0)
    ax.imshow(img.squeeze(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=FONT_SIZE)
    return ax


def draw_boxes(
    ax: Axes,
    boxes: torch.Tensor | np.ndarray,
    labels: Sequence[int] | torch.Tensor | None = None,
    scores: Sequence[float] | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    colour: Any = None,
    linewidth: float = 1.5,
    linestyle: str = "-",
    alpha: float = 1.0,
    text: bool = True,
) -> Axes:
    """Draw (N, 4) xyxy boxes. With ``labels`` each box takes its class colour and a caption
    (class name and, with ``scores``, the score); ``colour`` overrides the class colours."""
    boxes = _np(boxes).reshape(-1, 4)
    labels_np = None if labels is None else _np(labels).astype(int)
    scores_np = None if scores is None else _np(scores)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        c = (
            colour
            if colour is not None
            else (class_colour(labels_np[i]) if labels_np is not None else "yellow")
        )
        ax.add_patch(
            Rectangle(
                (x1 - 0.5, y1 - 0.5),  # imshow puts pixel centres on integers
                x2 - x1,
                y2 - y1,
                fill=False,
                edgecolor=c,
                linewidth=linewidth,
                linestyle=linestyle,
                alpha=alpha,
            )
        )
        if text and (labels_np is not None or scores_np is not None):
            caption = []
            if labels_np is not None:
                caption.append(
                    class_names[labels_np[i]] if class_names is not None else str(labels_np[i])
                )
            if scores_np is not None:
                caption.append(f"{scores_np[i]:.2f}")
            ax.text(
                x1 - 0.5,
                y1 - 1.5,
                " ".join(caption),
                fontsize=CAPTION_SIZE,
                color="white",
                bbox={"facecolor": c, "alpha": 0.8, "pad": 0.5, "edgecolor": "none"},
            )
    return ax


def draw_masks(
    ax: Axes,
    masks: torch.Tensor | np.ndarray,
    labels: Sequence[int] | torch.Tensor | None = None,
    alpha: float = 0.5,
    threshold: float = 0.5,
) -> Axes:
    """Overlay (N, H, W) masks (binary, or probabilities cut at ``threshold``) in their class
    colours (instance colours when no labels are given)."""
    masks = _np(masks)
    if masks.size == 0:
        return ax
    h, w = masks.shape[-2:]
    overlay = np.zeros((h, w, 4))
    labels_np = None if labels is None else _np(labels).astype(int)
    for i, m in enumerate(masks.reshape(-1, h, w)):
        c = class_colour(labels_np[i] if labels_np is not None else i + 1)
        overlay[m > threshold] = (*c, alpha)
    ax.imshow(overlay, interpolation="nearest")
    return ax


def draw_keypoints(
    ax: Axes,
    keypoints: torch.Tensor | np.ndarray,
    skeleton: Sequence[tuple[int, int]] = (),
    colour: Any = "white",
    names: Sequence[str] | None = None,
    markersize: float = 3.0,
) -> Axes:
    """Draw (N, K, 3) keypoints (x, y, visibility) with their skeleton (0-based pairs).

    Visible points (v=2) are filled dots; labelled but hidden points (v=1) are hollow;
    unlabelled points (v=0) are not drawn. Points whose name starts with ``left_`` are
    drawn in red and ``right_`` in blue, so flips can be checked by eye."""
    kps = _np(keypoints)
    if kps.size == 0:
        return ax
    for person in kps.reshape(-1, kps.shape[-2], 3):
        for a, b in skeleton:
            if max(a, b) < len(person) and person[a, 2] > 0 and person[b, 2] > 0:
                ax.plot(
                    [person[a, 0] - 0.5, person[b, 0] - 0.5],
                    [person[a, 1] - 0.5, person[b, 1] - 0.5],
                    color=colour,
                    linewidth=1.0,
                    alpha=0.9,
                )
        for k, (x, y, v) in enumerate(person):
            if v <= 0:
                continue
            c = colour
            name = names[k] if names is not None and k < len(names) else ""
            if name.startswith("left_"):
                c = "red"
            elif name.startswith("right_"):
                c = "dodgerblue"
            ax.plot(
                x - 0.5,
                y - 0.5,
                "o",
                markersize=markersize,
                markerfacecolor=c if v >= 2 else "none",
                markeredgecolor=c,
                markeredgewidth=1.0,
            )
    return ax


def draw_target(
    image: torch.Tensor,
    target: dict[str, Any],
    class_names: Sequence[str] | None = None,
    skeleton: Sequence[tuple[int, int]] = (),
    keypoint_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    boxes: bool = True,
    masks: bool = True,
    keypoints: bool = True,
    title: str = "",
) -> Axes:
    """An image with a dataset target (or model output) drawn on it: masks, boxes with class
    names (and scores, when the dict has ``scores``), and keypoints with the skeleton."""
    ax = show_image(image, ax=ax, title=title)
    labels = target.get("labels")
    if masks and "masks" in target:
        m = target["masks"]
        if isinstance(m, torch.Tensor) and m.dim() == 4:  # (N, 1, H, W) model output
            m = m[:, 0]
        draw_masks(ax, m, labels)
    if boxes and "boxes" in target:
        draw_boxes(ax, target["boxes"], labels, target.get("scores"), class_names)
    if keypoints and "keypoints" in target and _np(target["keypoints"]).size:
        draw_keypoints(ax, target["keypoints"], skeleton, names=keypoint_names)
    return ax


def draw_detections(
    image: torch.Tensor,
    detections: dict[str, Any],
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
    ground_truth: dict[str, Any] | None = None,
    ax: Axes | None = None,
    title: str = "",
    captions: bool = True,
    linewidth: float = 1.5,
) -> Axes:
    """Detections above ``score_threshold`` (solid, captioned with class and score unless
    ``captions`` is False) over the ground truth (dashed white), so misses and false
    positives can be seen at a glance."""
    ax = show_image(image, ax=ax, title=title)
    if ground_truth is not None and len(ground_truth["boxes"]):
        draw_boxes(ax, ground_truth["boxes"], colour="white", linestyle="--", linewidth=1.0)
    keep = _np(detections["scores"]) >= score_threshold
    draw_boxes(
        ax,
        _np(detections["boxes"])[keep],
        _np(detections["labels"])[keep],
        _np(detections["scores"])[keep],
        class_names,
        linewidth=linewidth,
        text=captions,
    )
    return ax


# ----------------------------------------------------------------------------------------
# Chapter 07: masks and keypoints


def draw_instances(
    image: torch.Tensor,
    detections: dict[str, Any],
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
    skeleton: Sequence[tuple[int, int]] = (),
    keypoint_names: Sequence[str] | None = None,
    keypoint_labels: Sequence[int] = (),
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """A Mask R-CNN's output on an image: for each detection above ``score_threshold``,
    its mask (probabilities cut at 0.5) in its class colour, its box and caption, and,
    for detections whose label is in ``keypoint_labels``, its keypoints and skeleton."""
    keep = _np(detections["scores"]) >= score_threshold
    kept = {k: _np(v)[keep] for k, v in detections.items() if hasattr(v, "__len__")}
    ax = show_image(image, ax=ax, title=title)
    if "masks" in kept:
        masks = kept["masks"]
        draw_masks(ax, masks[:, 0] if masks.ndim == 4 else masks, kept["labels"])
    draw_boxes(ax, kept["boxes"], kept["labels"], kept["scores"], class_names)
    if "keypoints" in kept and len(keypoint_labels):
        person = np.isin(kept["labels"], list(keypoint_labels))
        draw_keypoints(ax, kept["keypoints"][person], skeleton, names=keypoint_names)
    return ax


def draw_mask_target(
    image: torch.Tensor,
    box: torch.Tensor | np.ndarray,
    gt_mask: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    label: int = 1,
    pasted: torch.Tensor | np.ndarray | None = None,
) -> plt.Figure:
    """How a mask target is made (Mask R-CNN section 3): left, the image with a RoI (the
    box) and the ground-truth mask of the object it matched; middle, the ``M x M`` target
    (the mask cut out along the RoI and resized by RoIAlign; grey levels are fractions of
    a bin covered); right (with ``pasted``), the target pasted back into the image."""
    panels = 3 if pasted is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(2.6 * panels, 2.6), dpi=DPI)
    show_image(image, ax=axes[0], title="RoI and its object's mask")
    draw_masks(axes[0], _np(gt_mask)[None], [label], alpha=0.45)
    draw_boxes(axes[0], _np(box)[None], colour="yellow")
    t = _np(target)
    im = axes[1].imshow(t, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(f"{t.shape[0]} x {t.shape[1]} target", fontsize=FONT_SIZE)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    if pasted is not None:
        show_image(image, ax=axes[2], title="target pasted back")
        draw_masks(axes[2], _np(pasted)[None], [label], alpha=0.6)
        draw_boxes(axes[2], _np(box)[None], colour="yellow")
    fig.tight_layout()
    return fig


def plot_mask_probabilities(
    sigmoid: torch.Tensor | np.ndarray,
    softmax: torch.Tensor | np.ndarray,
    classes: Sequence[int],
    class_names: Sequence[str] | None = None,
) -> plt.Figure:
    """The same mask logits of one RoI read two ways (Mask R-CNN Table 2b): top row the
    per-class sigmoid (each class's mask on its own, in [0, 1]), bottom row the per-pixel
    softmax over the classes (the classes share each pixel's probability). ``sigmoid``
    and ``softmax`` are ``(C, M, M)`` probabilities; ``classes`` the channels to show."""
    n = len(classes)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n + 0.8, 4.0), dpi=DPI, squeeze=False)
    for row, (probs, name) in enumerate(((sigmoid, "sigmoid"), (softmax, "softmax"))):
        p = _np(probs)
        for col, k in enumerate(classes):
            ax = axes[row, col]
            im = ax.imshow(p[k], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            label = class_names[k] if class_names is not None else str(k)
            ax.set_title(f"{name}: {label}", fontsize=FONT_SIZE)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=list(axes.ravel()), fraction=0.03, pad=0.02, label="probability")
    return fig


def draw_keypoint_targets(
    image: torch.Tensor,
    roi: torch.Tensor | np.ndarray,
    keypoints: torch.Tensor | np.ndarray,
    cells: torch.Tensor | np.ndarray,
    valid: torch.Tensor | np.ndarray,
    heatmap_size: int,
    names: Sequence[str] | None = None,
    decoded: torch.Tensor | np.ndarray | None = None,
    show: Sequence[int] = (0, 4, 9),
) -> plt.Figure:
    """Keypoints as one-hot ``m x m`` targets (Mask R-CNN section 5): left, the image with
    the RoI and the object's keypoints; then, for the keypoints ``show``, the RoI's
    ``m x m`` grid with the one target cell lit (``cells``: flat indices, ``valid``:
    whether the keypoint has a target). With ``decoded`` (``(K, 3)`` keypoints read back
    from the one-hot maps), crosses mark them on the image."""
    roi = _np(roi)
    kps = _np(keypoints)
    fig, axes = plt.subplots(1, 1 + len(show), figsize=(2.5 * (1 + len(show)), 2.6), dpi=DPI)
    show_image(image, ax=axes[0], title="RoI and keypoints")
    draw_boxes(axes[0], roi[None], colour="yellow")
    draw_keypoints(axes[0], kps[None], names=names, markersize=2.5)
    if decoded is not None:
        d = _np(decoded)
        axes[0].plot(d[:, 0] - 0.5, d[:, 1] - 0.5, "x", color="yellow", markersize=3)
    x1, y1, x2, y2 = roi
    axes[0].set_xlim(x1 - 8, x2 + 8)
    axes[0].set_ylim(y2 + 8, y1 - 8)
    for ax, k in zip(axes[1:], show, strict=True):
        grid = np.zeros(heatmap_size * heatmap_size)
        if int(_np(valid)[k]):
            grid[int(_np(cells)[k])] = 1.0
        ax.imshow(grid.reshape(heatmap_size, heatmap_size), cmap="gray", interpolation="nearest")
        name = names[k] if names is not None else str(k)
        ax.set_title(f"{name}: one-hot {heatmap_size}x{heatmap_size}", fontsize=FONT_SIZE)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def draw_keypoint_heatmaps(
    image: torch.Tensor,
    roi: torch.Tensor | np.ndarray,
    heatmaps: Mapping[str, torch.Tensor],
    names: Sequence[str] | None = None,
    show: Sequence[int] = (0, 4, 9),
    keypoints: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    skeleton: Sequence[tuple[int, int]] = (),
) -> plt.Figure:
    """Predicted keypoint heatmaps of one box, one row per model (Mask R-CNN section 5:
    each map is a softmax over its ``m x m`` cells). First column: the image cut to the
    box, with the largest of the ``K`` keypoints' probabilities at each cell laid over it
    (and, given ``keypoints[name]`` ``(K, 3)``, the points decoded from the maps); then one
    column per keypoint in ``show``, its probability map over the box. Titles give each
    map's entropy (:func:`rcnn_steps.modeling.keypoint_head.heatmap_entropy`; a flat map has
    ``log(m^2)``). One logarithmic colour scale for the whole figure, from ``1 / (100
    m^2)`` to 1: a flat map is one even colour (``1 / m^2`` in every cell), a peaked map a
    bright spot on black.

    Args:
        image: ``(3, H, W)`` in [0, 1].
        roi: ``(4,)`` xyxy, the box the heatmaps were predicted for.
        heatmaps: row name -> ``(K, m, m)`` logits of that box (e.g. a row of
            :meth:`rcnn_steps.faster_rcnn.FasterRCNN.keypoint_heatmaps`).
        names: the K keypoint names; show: which keypoints get a column.
    """
    if not heatmaps:
        raise ValueError("draw_keypoint_heatmaps: give at least one row of heatmaps.")
    x1, y1, x2, y2 = (float(v) for v in _np(roi))
    # pixel i covers [i, i + 1); imshow centres pixel i on i, hence the -0.5
    extent = (x1 - 0.5, x2 - 0.5, y2 - 0.5, y1 - 0.5)
    probs = {
        row: torch.softmax(maps.detach().float().flatten(-2), -1).view_as(maps).cpu()
        for row, maps in heatmaps.items()
    }
    entropy = {row: heatmap_entropy(maps.detach().float()).cpu() for row, maps in heatmaps.items()}
    cells = next(iter(probs.values())).shape[-1] * next(iter(probs.values())).shape[-2]
    scale = LogNorm(vmin=0.01 / cells, vmax=1.0, clip=True)
    cols = 1 + len(show)
    fig, axes = plt.subplots(
        len(probs), cols, figsize=(1.7 * cols + 0.9, 2.5 * len(probs)), dpi=DPI, squeeze=False
    )
    for row_axes, (row, p) in zip(axes, probs.items(), strict=True):
        panels = [(p.max(dim=0).values, f"max of {len(p)}: H {entropy[row].mean():.2f}")]
        for k in show:
            name = names[k] if names is not None else str(k)
            panels.append((p[k], f"{name}: H {entropy[row][k]:.2f}"))
        for col, (ax, (values, title)) in enumerate(zip(row_axes, panels, strict=True)):
            show_image(image, ax=ax)
            im = ax.imshow(
                values.numpy(), cmap="magma", norm=scale, alpha=0.85, extent=extent,
                interpolation="nearest",
            )  # fmt: skip
            if col == 0 and keypoints is not None and row in keypoints:
                draw_keypoints(ax, _np(keypoints[row])[None], skeleton, names=names, markersize=2)
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            ax.set_title(title, fontsize=CAPTION_SIZE + 1)
        row_axes[0].set_ylabel(row, fontsize=FONT_SIZE)
    bar = fig.colorbar(im, ax=list(axes.ravel()), fraction=0.03, pad=0.02)
    bar.set_label("probability per cell (log scale)", fontsize=FONT_SIZE)
    return fig


def plot_stage_times(stage_seconds: dict[str, float], ax: Axes | None = None) -> Axes:
    """Horizontal bars: milliseconds per test-time stage (a model's ``inspect()``
    ``stage_seconds``), in the order the stages run."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 0.45 * len(stage_seconds) + 0.8), dpi=DPI)
    names = list(stage_seconds)[::-1]
    ms = [stage_seconds[n] * 1e3 for n in names]
    ax.barh(names, ms, color="tab:blue")
    for y, v in enumerate(ms):
        ax.text(v, y, f" {v:.1f}", va="center", fontsize=FONT_SIZE)
    ax.set_xlabel("milliseconds per image")
    ax.set_xlim(0, max(ms) * 1.25 if ms else 1)
    return ax


def image_grid(
    n: int, cols: int = 4, size: float = 2.2, dpi: int = DPI
) -> tuple[plt.Figure, list[Axes]]:
    """A figure with ``n`` small panels in rows of ``cols``; returns (figure, axes list)."""
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), dpi=dpi, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


# ----------------------------------------------------------------------------------------
# Chapter 08: what the final model gets wrong

#: A failure kind as a panel's title says it.
_KIND_TITLES = {
    "missed": "missed",
    "wrong_class": "wrong class",
    "poor_box": "poor box",
    "duplicate": "duplicate",
    "wrong_class_poor_box": "wrong class, poor box",
    "background": "background",
}


def _failure_caption(failure: Any, errors: Any, names: Any, det: int, obj: int) -> str:
    """The second line of a gallery panel's title: what was detected, and on what."""
    kind = failure.kind
    if failure.side == "object":
        text = f"{failure.size} {names[int(errors.gt_labels[obj])]}"
        if kind == "wrong_class":
            text += f" as {names[int(errors.det_labels[det])]} {errors.det_scores[det]:.2f}"
        elif kind == "poor_box":
            text += f", IoU {errors.gt_iou[obj]:.2f}"
            if errors.det_kinds[det] == "hit":  # a good overlap, but it matched another
                text += "\nwith a neighbour's detection"
        return text
    text = f"{names[int(errors.det_labels[det])]} {errors.det_scores[det]:.2f}"
    if kind in ("wrong_class", "wrong_class_poor_box"):
        text += f" on {names[int(errors.gt_labels[obj])]}"
    if kind in ("poor_box", "wrong_class_poor_box"):
        text += f", IoU {errors.det_iou[det]:.2f}"
    if kind == "background" and errors.det_in_crowd[det]:
        text += " in a crowd"
    elif kind == "background" and obj >= 0:  # the object it lies inside
        text += f" inside a {names[int(errors.gt_labels[obj])]}"
    return text


def failure_gallery(
    failures: Sequence[Any],
    summary: Any,
    load_image: Any,
    *,
    cols: int = 4,
    size: float = 2.2,
    crop: bool = True,
    margin: float = 8.0,
    min_side: float = 48.0,
) -> list[Axes]:
    """One panel per failure of :meth:`~rcnn_steps.evaluation.ErrorSummary.failures`
    (chapter 08), titled with its kind and what was detected on what.

    In each panel the object concerned is dashed white (outlined in black, so it shows on
    any background; for a ``background`` detection, the object whose box holds it, if
    any) and the detection concerned is solid: red when it is a false positive,
    in its class colour when it is a hit (an object poorly boxed because its detection
    went to a neighbour). A duplicate also shows, thin and in its class colour, the
    detection that took the object first. With ``crop`` the panel zooms on the boxes
    (``margin`` pixels around them, at least ``min_side`` pixels across).

    Args:
        failures: :class:`~rcnn_steps.evaluation.Failure` records.
        summary: the :class:`~rcnn_steps.evaluation.ErrorSummary` they come from
            (its ``per_image`` verdicts and ``class_names``).
        load_image: ``image_id -> (3, H, W)`` image, e.g. a dataset's ``load_image``.

    Returns the panels' axes, one per failure, in order.
    """
    if not failures:
        raise ValueError("no failures to draw: pass at least one Failure")
    fig, axes = image_grid(len(failures), cols=cols, size=size)
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for ax, failure in zip(axes, failures, strict=True):
        errors = summary.per_image[failure.image_id]
        if failure.side == "object":
            obj, det = failure.index, int(errors.gt_detection[failure.index])
        else:
            det, obj = failure.index, int(errors.det_object[failure.index])
            if failure.kind == "background" and not errors.det_in_crowd[det]:
                obj = int(errors.det_inside[det])  # a part of this object, or -1
        image = load_image(failure.image_id)
        show_image(image, ax=ax)
        drawn = []
        if failure.kind == "duplicate":  # the detection that found the object first
            first = int(errors.gt_detection[obj])
            draw_boxes(
                ax,
                errors.det_boxes[first],
                colour=class_colour(errors.det_labels[first]),
                linewidth=1.0,
                text=False,
            )
            drawn.append(errors.det_boxes[first])
        if obj >= 0:
            draw_boxes(ax, errors.gt_boxes[obj], colour="white", linestyle="--", text=False)
            ax.patches[-1].set_path_effects(outline)
            drawn.append(errors.gt_boxes[obj])
        if det >= 0:
            is_hit = errors.det_kinds[det] == "hit"
            colour = class_colour(errors.det_labels[det]) if is_hit else "red"
            draw_boxes(ax, errors.det_boxes[det], colour=colour, text=False)
            drawn.append(errors.det_boxes[det])
        caption = _failure_caption(failure, errors, summary.class_names, det, obj)
        ax.set_title(
            f"{_KIND_TITLES.get(failure.kind, failure.kind)}\n{caption}", fontsize=FONT_SIZE
        )
        if crop and drawn:
            height, width = _np(image).shape[-2:]
            boxes = np.stack([_np(b).reshape(4) for b in drawn])
            x1, y1 = boxes[:, :2].min(axis=0) - margin
            x2, y2 = boxes[:, 2:].max(axis=0) + margin
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            half = max(x2 - x1, y2 - y1, min_side) / 2  # a square window
            cx = float(np.clip(cx, min(half, width / 2), max(width - half, width / 2)))
            cy = float(np.clip(cy, min(half, height / 2), max(height - half, height / 2)))
            ax.set_xlim(cx - half - 0.5, cx + half - 0.5)
            ax.set_ylim(cy + half - 0.5, cy - half - 0.5)  # image rows grow downwards
    fig.tight_layout()
    return axes


# ----------------------------------------------------------------------------------------
# Measurements as pictures: curves, histograms, ablation bars, AP against time.
# ----------------------------------------------------------------------------------------


def _figure_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=DPI)
    return ax


def _label_axes(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=FONT_SIZE)
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    ax.tick_params(labelsize=FONT_SIZE)


def curves(
    series: dict[str, tuple[Any, Any]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    ax: Axes | None = None,
    logx: bool = False,
    hlines: Sequence[float] = (),
    styles: Sequence[str] | None = None,
    markers: bool = False,
    legend: str = "best",
) -> Axes:
    """Several curves on one axes: ``series`` maps a legend label to ``(x, y)``.
    ``hlines`` draws dotted reference levels (e.g. IoU 0.5 and 0.75); ``styles`` gives
    one matplotlib line style per curve."""
    ax = _figure_axes(ax, (4.2, 2.6))
    for k, (label, (x, y)) in enumerate(series.items()):
        style = styles[k] if styles is not None else "-"
        ax.plot(_np(x), _np(y), style, marker="o" if markers else None, markersize=3, label=label)
    for level in hlines:
        ax.axhline(level, color="k", linewidth=0.7, linestyle=":")
    if logx:
        ax.set_xscale("log")
    _label_axes(ax, xlabel, ylabel, title)
    if len(series) > 1 or next(iter(series), ""):
        ax.legend(fontsize=FONT_SIZE, loc=legend)
    return ax


def histogram(
    values: Any,
    bins: Any,
    *,
    marks: Sequence[float] = (),
    xlabel: str = "",
    ylabel: str = "count",
    title: str = "",
    ax: Axes | None = None,
) -> Axes:
    """A grey histogram of ``values`` with dashed vertical ``marks`` (e.g. thresholds)."""
    ax = _figure_axes(ax, (5.0, 2.2))
    ax.hist(_np(values), bins=_np(bins), color="grey")
    for x in marks:
        ax.axvline(x, color="k", linestyle="--", linewidth=1)
    _label_axes(ax, xlabel, ylabel, title)
    return ax


def pr_curve(recall: Any, precision: Any, *, ax: Axes | None = None, title: str = "") -> Axes:
    """A precision/recall curve: each detection's (recall, precision) as a grey dot and
    the envelope (the best precision at this recall or higher) that AP integrates."""
    ax = _figure_axes(ax, (3.6, 2.6))
    recall, precision = _np(recall), _np(precision)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    ax.plot(recall, precision, "o", color="grey", label="(recall, precision)")
    ax.step(
        np.r_[0, recall], np.r_[envelope[:1], envelope], where="pre", color="C0", label="envelope"
    )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    _label_axes(ax, "recall", "precision", title)
    ax.legend(fontsize=FONT_SIZE, loc="lower left")
    return ax


def before_after(
    before: Any,
    after: Any,
    *,
    xlabel: str = "before",
    ylabel: str = "after",
    title: str = "",
    lines: Sequence[float] = (),
    ax: Axes | None = None,
) -> Axes:
    """Paired measurements as a scatter against the diagonal: a point above it improved
    (e.g. each window's IoU with its object before and after box regression). ``lines``
    marks thresholds on both axes (dotted)."""
    ax = _figure_axes(ax, (3.0, 3.0))
    before, after = _np(before), _np(after)
    ax.scatter(before, after, s=3, alpha=0.3, color="C0", linewidths=0)
    lo = float(min(before.min(), after.min(), 0.0))
    hi = float(max(before.max(), after.max(), 1.0))
    ax.plot([lo, hi], [lo, hi], color="k", linewidth=0.8)
    for level in lines:
        ax.axvline(level, color="k", linewidth=0.6, linestyle=":")
        ax.axhline(level, color="k", linewidth=0.6, linestyle=":")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    _label_axes(ax, xlabel, ylabel, title)
    return ax


def training_curves(
    histories: dict[str, Sequence[dict[str, float]]],
    keys: Sequence[str] = ("total_loss",),
    *,
    ax: Axes | None = None,
    title: str = "",
    logy: bool = False,
    ylabel: str = "loss",
    hlines: Mapping[str, float] | None = None,
) -> Axes:
    """Loss curves of training runs: ``histories`` maps a run's name to its logged records
    (dicts with ``"step"`` and the ``keys``: an engine ``metrics.jsonl``, a results
    file's ``loss_history``, or any per-step trace such as an ``eval_history``). One line
    per (run, key); runs keep one colour, keys differ by line style. ``hlines`` maps a
    label to a reference level, drawn dotted and named at the right."""
    ax = _figure_axes(ax, (4.4, 2.6))
    styles = ["-", "--", ":", "-."]
    for r, (name, records) in enumerate(histories.items()):
        for k, key in enumerate(keys):
            points = [(rec["step"], rec[key]) for rec in records if key in rec]
            if not points:
                raise KeyError(f"training_curves: run {name!r} logged no {key!r}")
            steps, values = zip(*points, strict=True)
            label = name if len(keys) == 1 else (key if len(histories) == 1 else f"{name}: {key}")
            ax.plot(steps, values, styles[k % len(styles)], color=f"C{r}", label=label)
    for label, level in (hlines or {}).items():
        ax.axhline(level, color="k", linewidth=0.8, linestyle=":")
        ax.annotate(label, (1, level), xycoords=("axes fraction", "data"), xytext=(-2, 2),
                    textcoords="offset points", ha="right", va="bottom",
                    fontsize=FONT_SIZE)  # fmt: skip
    if logy:
        ax.set_yscale("log")
    _label_axes(ax, "training step", ylabel, title)
    ax.legend(fontsize=FONT_SIZE)
    return ax


def gradient_norms(
    trace: Sequence[Mapping[str, float]],
    clip: float | None = None,
    *,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """Which loss term the gradient is made of, over training: each term's gradient norm
    (one colour per term) and the whole gradient's (black), log scale. ``trace`` holds
    records ``{"step", "grad/<term>", ..., "grad/total_loss"}`` as
    :func:`rcnn_steps.engine.branch_gradient_norms` measures them (prefixed ``grad/``).
    ``clip``: the whole gradient's clip norm, dashed: where the black line is above it,
    every parameter's step is scaled by ``clip / total``, the term that makes the total
    setting how far every branch moves."""
    if not trace:
        raise ValueError("gradient_norms: the trace is empty")
    terms = [k for k in trace[0] if k.startswith("grad/") and k != "grad/total_loss"]
    if not terms or "grad/total_loss" not in trace[0]:
        raise KeyError("gradient_norms: records need 'grad/<term>' keys and 'grad/total_loss'")
    ax = _figure_axes(ax, (4.6, 2.8))
    steps = [r["step"] for r in trace]
    for k, term in enumerate(terms):
        name = term.removeprefix("grad/loss_").replace("_", " ")
        ax.plot(steps, [max(r[term], 1e-6) for r in trace], color=f"C{k}", linewidth=1.2,
                label=name)  # fmt: skip
    ax.plot(steps, [r["grad/total_loss"] for r in trace], color="k", linewidth=1.6,
            label="whole gradient")  # fmt: skip
    if clip is not None:
        ax.axhline(clip, color="k", linestyle="--", linewidth=0.9)
        ax.annotate(f"clip {clip:g}", (1, clip), xycoords=("axes fraction", "data"),
                    xytext=(-2, 2), textcoords="offset points", ha="right", va="bottom",
                    fontsize=FONT_SIZE)  # fmt: skip
    ax.set_yscale("log")
    _label_axes(ax, "training step", "gradient norm", title)
    ax.legend(fontsize=FONT_SIZE - 1, ncol=2)
    return ax


def recall_curves(
    num_proposals: Sequence[int],
    recalls: dict[str, Sequence[float]],
    *,
    iou: float = 0.5,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """Recall (share of objects some proposal covers at IoU >= ``iou``) against the number
    of proposals per image (log scale), one curve per method."""
    ax = _figure_axes(ax, (3.8, 2.6))
    for k, (name, values) in enumerate(recalls.items()):
        ax.plot(num_proposals, _np(values), "o-", color=f"C{k}", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    _label_axes(ax, "proposals per image", f"recall at IoU {iou:g}", title)
    ax.legend(fontsize=FONT_SIZE)
    return ax


def ablation_bars(
    summary: dict[str, dict[str, Any]],
    metric: str,
    *,
    names: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
    paper: dict[str, float | None] | None = None,
    paper_label: str = "paper",
    ax: Axes | None = None,
    title: str = "",
    legend: bool = True,
) -> Axes:
    """An ablation table as horizontal bars, in %: each setting's mean ``metric`` over its
    seeds (a bar), every seed's range (a whisker from the worst to the best seed), and
    the paper's number (a hollow diamond, ``paper`` in %) where there is one.

    ``summary`` is a results file's ``summary`` (``{setting: {metric: {"mean", "min",
    "max"}, "n": seeds}}``); ``names`` picks and orders the settings (top to bottom);
    ``labels`` replaces their names on the axis; ``legend=False`` leaves the legend out
    (for all but one of several panels). An effect is real only where whiskers do not
    overlap. A setting without ``metric`` (not run yet) gets an empty row marked "not
    run"."""
    names = list(summary) if names is None else list(names)
    ax = _figure_axes(ax, (5.0, 0.35 * len(names) + 0.9))
    y = np.arange(len(names))[::-1]
    for yi, name in zip(y, names, strict=True):
        if metric not in summary[name]:  # a setting not run yet: an empty row, said so
            ax.text(0.5, yi, "not run", fontsize=FONT_SIZE, va="center", color="grey")
            continue
        s = summary[name][metric]
        mean, lo, hi = 100 * s["mean"], 100 * s["min"], 100 * s["max"]
        ax.barh(yi, mean, color="C0", alpha=0.6, height=0.6)
        ax.plot([lo, hi], [yi, yi], color="k", linewidth=1.2)
        ax.plot([lo, hi], [yi, yi], "|", color="k", markersize=8)
        value = paper.get(name) if paper else None
        if value is not None:
            ax.plot(value, yi, "D", mfc="none", color="C3", markersize=5)
    seeds = sorted({summary[n].get("n", 0) for n in names if metric in summary[n]})
    handles = [
        plt.Rectangle((0, 0), 1, 1, color="C0", alpha=0.6),
        plt.Line2D([], [], color="k", marker="|", markersize=8),
    ]
    text = [f"ours, mean of {'/'.join(map(str, seeds))} seeds", "ours, worst to best seed"]
    if paper and any(v is not None for v in paper.values()):
        handles.append(plt.Line2D([], [], color="C3", marker="D", mfc="none", linestyle=""))
        text.append(paper_label)
    ax.set_yticks(y)
    ax.set_yticklabels([(labels or {}).get(n, n) for n in names], fontsize=FONT_SIZE)
    _label_axes(ax, f"{metric}, %", "", title)
    if legend:  # below the axis label, where no bar can hide it
        ax.legend(
            handles,
            text,
            fontsize=FONT_SIZE,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.3),
            ncol=3,
        )
    return ax


def effect_sentence(effect: Mapping[str, Any]) -> str:
    """The verdict sentence of one effect record (see :func:`effect_forest`), e.g.
    ``"RoIAlign over RoIPool: +11.8 mask AP (paper +3.4)"``: our mean effect over the
    seeds, the paper's in brackets (with its metric where it is not ours), ``n=1`` when
    one seed is all there is."""
    ours = [float(v) for v in effect["ours"]]
    if not ours:
        raise ValueError(f"effect {effect['label']!r} has no per-seed effects ('ours' is empty)")
    text = f"{effect['label']}: {np.mean(ours):+.1f} {effect['metric']}"
    paper = effect.get("paper")
    if paper is None:
        text += " (no paper number)"
    else:
        theirs = effect.get("paper_metric") or effect["metric"]
        text += f" (paper {paper:+.1f}" + ("" if theirs == effect["metric"] else f" {theirs}") + ")"
    return text + (", n=1" if len(ours) == 1 else "")


def _wrap_sentence(sentence: str, width: int) -> str:
    """:func:`effect_sentence` wrapped at ``width`` characters, but never inside a number
    and its metric ("+11.8 mask AP") or inside the paper's bracket."""
    head, _, tail = sentence.rpartition(": ")
    ours, _, paper = tail.partition(" (")  # "+11.8 mask AP", "paper +3.4)"
    units = [ours, f"({paper}"] if paper else [ours]
    glued = " ".join(u.replace(" ", "\N{NO-BREAK SPACE}") for u in units)  # textwrap keeps these
    return textwrap.fill(f"{head}: {glued}", width)


def effect_forest(
    effects: Sequence[Mapping[str, Any]],
    *,
    ax: Axes | None = None,
    title: str = "",
    wrap: int = 60,
    legend: bool = True,
) -> Axes:
    """Ablations as effects, one row per comparison (a forest plot): how much a change
    moved a metric on our data, beside how much it moved the paper's on its own.

    ``effects`` are plain records (``rcnn_steps.ablations.effect_records`` makes them
    from a results file), each a dict with ``label`` (what was compared, "RoIAlign over
    RoIPool"), ``ours`` (the effect on each seed, variant minus baseline, in points: a
    list of n floats), ``paper`` (the paper's effect in points, or None), ``metric``
    (ours, "mask AP") and optionally ``paper_metric`` (the paper's, where it differs)
    and ``section`` (rows with the same section are drawn under one bold heading, in the
    order the sections first appear).

    Each row: the seeds as small grey ticks, their mean as a dot, a line from the
    smallest to the largest seed (none for one seed, which is marked "n=1" instead: one
    run has no spread to draw), and the paper's effect as a hollow red diamond; a
    vertical line at 0 (no effect). The rows are labelled with :func:`effect_sentence`,
    wrapped at ``wrap`` characters. An effect whose seed line crosses 0 is not settled
    by these seeds; the paper's diamond says which way, and how far, the paper saw it
    go on COCO or VOC with a far larger model."""
    if not effects:
        raise ValueError("effect_forest: no effects to draw; pass at least one record")
    sections: dict[Any, list[Mapping[str, Any]]] = {}
    for effect in effects:
        sections.setdefault(effect.get("section"), []).append(effect)
    rows: list[tuple[str, Mapping[str, Any] | None]] = []  # (label, effect or None: heading)
    for section, members in sections.items():
        if section is not None:
            rows.append((str(section), None))
        rows += [(_wrap_sentence(effect_sentence(e), wrap), e) for e in members]
    lines = max(label.count("\n") + 1 for label, _ in rows)
    row_height = 0.14 + 0.17 * lines  # inches per row
    if ax is None:
        longest = max(len(line) for label, _ in rows for line in label.split("\n"))
        label_width = 0.075 * longest * FONT_SIZE / 9  # inches (an average character)
        _, ax = plt.subplots(figsize=(3.6 + label_width, row_height * len(rows) + 1.3), dpi=DPI)
    y = np.arange(len(rows))[::-1].astype(float)
    xs = [0.0]
    for yi, (_, effect) in zip(y, rows, strict=True):
        if effect is None:
            continue
        ours = np.asarray(effect["ours"], dtype=float)
        xs += [*ours.tolist()]
        (seeds,) = ax.plot(ours, np.full_like(ours, yi), "|", color="0.3", markersize=11,
                           markeredgewidth=1.0, zorder=3)  # fmt: skip
        seeds.set_gid("seeds")
        if len(ours) > 1:
            (span,) = ax.plot([ours.min(), ours.max()], [yi, yi], color="C0", linewidth=1.6)
            span.set_gid("range")
        else:  # one run: say so where the range would be, rather than draw none silently
            note = ax.annotate("n=1", (ours[0], yi), textcoords="offset points", xytext=(0, -13),
                               ha="center", fontsize=FONT_SIZE - 1, color="0.35")  # fmt: skip
            note.set_gid("n=1")
        (mean,) = ax.plot(ours.mean(), yi, "o", color="C0", markersize=6)
        mean.set_gid("mean")
        if effect.get("paper") is not None:
            (paper,) = ax.plot(effect["paper"], yi, "D", mfc="none", color="C3", markersize=6,
                               markeredgewidth=1.4)  # fmt: skip
            paper.set_gid("paper")
            xs.append(float(effect["paper"]))
    ax.axvline(0.0, color="k", linewidth=0.8)
    lo, hi = min(xs), max(xs)
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    single = any(len(e["ours"]) == 1 for e in effects)
    ax.set_xlim(lo - pad, hi + (2.5 if single else 1.0) * pad)  # room for the last label
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(y)
    ax.set_yticklabels([label for label, _ in rows], fontsize=FONT_SIZE)
    for tick, (_, effect) in zip(ax.get_yticklabels(), rows, strict=True):
        if effect is None:
            tick.set_fontweight("bold")
    ax.grid(True, axis="x", color="0.88", linewidth=0.6)
    ax.set_axisbelow(True)
    metrics = {e["metric"] for e in effects}
    what = metrics.pop() if len(metrics) == 1 else "AP"
    _label_axes(ax, f"effect, {what} points (variant minus baseline)", "", title)
    if legend:
        counts = sorted({len(e["ours"]) for e in effects} - {1})
        if counts:
            handles = [
                plt.Line2D([], [], color="0.3", marker="|", linestyle="", markersize=11),
                plt.Line2D([], [], color="C0", marker="o", linewidth=1.6, markersize=6),
            ]
            seeds = "/".join(map(str, counts))
            text = ["ours, each seed", f"ours, mean and range of {seeds} seeds"]
        else:  # one run per row: no seeds to tell apart, no range
            handles = [plt.Line2D([], [], color="C0", marker="o", linestyle="", markersize=6)]
            text = ["ours, one run (n=1)"]
        if any(e.get("paper") is not None for e in effects):
            handles.append(plt.Line2D([], [], color="C3", marker="D", mfc="none", linestyle=""))
            text.append("paper's effect (its data and model)")
        below = 0.55 / (ax.get_position().height * ax.figure.get_figheight())  # 0.55 in
        ax.legend(handles, text, fontsize=FONT_SIZE, loc="upper center", ncol=len(text),
                  bbox_to_anchor=(0.5, -below), frameon=False)  # fmt: skip
    return ax


def ap_vs_seconds(
    rows: Sequence[dict[str, Any]],
    metric: str = "AP",
    *,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """The evolution table as a picture: each detector's ``metric`` (in %) against its
    seconds per image (log scale), labelled with its chapter and name. Up and to the left
    is better. A row whose provenance says it was timed on more than one torch thread
    (``provenance.machine.torch_threads``) is marked so in its label, as the book's rows
    are compared on one thread."""
    ax = _figure_axes(ax, (4.6, 2.8))
    for k, row in enumerate(rows):
        x, y = row["seconds_per_image"], 100 * row["metrics"][metric]
        threads = row.get("provenance", {}).get("machine", {}).get("torch_threads", 1)
        ax.plot(x, y, "o", color=f"C{k}")
        ax.annotate(
            f"{row['chapter']} {row['detector']}"
            + (f" ({threads} threads)" if threads > 1 else ""),
            (x, y),
            textcoords="offset points",
            xytext=(4, 3 if k % 2 == 0 else -10),  # alternate, so neighbours' labels part
            fontsize=FONT_SIZE,
        )
    ax.set_xscale("log")
    lo = min(r["seconds_per_image"] for r in rows)
    hi = max(r["seconds_per_image"] for r in rows)
    ax.set_xlim(lo / 2, hi * 8)
    _label_axes(ax, "seconds per image (log scale)", f"box {metric}, %", title)
    return ax


def ladder_waterfall(
    grid: dict[str, Any],
    metric: str = "AP",
    *,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """What each rung of a controlled ladder bought (:func:`rcnn_steps.ladder.read_ladder_results`'s
    ``grid``): a waterfall whose first bar is the first rung's ``metric`` (in %, the seed
    mean) and each later bar the step from the rung before it to this one, green up,
    red down, with a whisker over this rung's seeds (min to max, so the step's noise can
    be read against its height) and ``n=`` the number of seeds under it. Rungs not run
    yet (or without ``metric``, e.g. mask AP before the mask branch) are left out, and
    the step is taken from the last rung drawn."""
    ax = _figure_axes(ax, (5.2, 3.0))
    drawn, level = [], None
    for name in grid["order"]:
        entry = grid["summary"].get(name, {})
        if metric not in entry:
            continue
        mean, lo, hi = (100 * entry[metric][k] for k in ("mean", "min", "max"))
        x = len(drawn)
        if level is None:
            ax.bar(x, mean, color="0.6", width=0.6)
        else:
            step = mean - level
            ax.bar(x, step, bottom=level, width=0.6, color="C2" if step >= 0 else "C3")
            ax.plot([x - 0.7, x - 0.3], [level, level], color="0.3", lw=0.8)  # from the last bar
            ax.annotate(f"{step:+.1f}", (x, max(mean, level)), textcoords="offset points",
                        xytext=(0, 3), ha="center", fontsize=FONT_SIZE)  # fmt: skip
        if entry["n"] > 1:
            ax.plot([x, x], [lo, hi], color="black", lw=1.2)
        ax.annotate(f"n={entry['n']}", (x, 0), textcoords="offset points", xytext=(0, 2),
                    ha="center", fontsize=FONT_SIZE,
                    color="white" if level is None else "0.3")  # fmt: skip
        drawn.append(name)
        level = mean
    ax.set_xticks(range(len(drawn)))
    ax.set_xticklabels([grid.get("short_labels", {}).get(n, n) for n in drawn], rotation=30,
                       ha="right")  # fmt: skip
    ax.axhline(0, color="0.3", lw=0.6)
    _label_axes(ax, "", f"{metric}, % (bars: step from the rung before)", title)
    return ax


# ----------------------------------------------------------------------------------------
# Feature maps, RoI bins and sampling points (chapters 03, 05 and 06).
# ----------------------------------------------------------------------------------------


def feature_grid(
    ax: Axes,
    values: Any = None,
    size: int | None = None,
    *,
    numbers: bool = False,
    fmt: str = "{:.0f}",
    cmap: str = "Greys",
    colorbar: bool = False,
) -> Axes:
    """A feature map drawn as its grid of cells, in the coordinates RoIAlign uses: cell
    ``(r, c)`` is the unit square centred at ``(x, y) = (c, r)``. ``values`` (H, W) shades
    the cells (``numbers`` writes each value in its cell; ``colorbar`` adds a scale);
    without values, ``size`` gives an empty ``size x size`` grid."""
    if values is not None:
        values = _np(values)
        size_h, size_w = values.shape
    else:
        size_h = size_w = int(size)
    if values is not None:
        extent = (-0.5, size_w - 0.5, size_h - 0.5, -0.5)
        im = ax.imshow(values, cmap=cmap, alpha=0.45, extent=extent)
        if colorbar:
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(
                labelsize=FONT_SIZE
            )
        if numbers:
            for r in range(size_h):
                for c in range(size_w):
                    ax.text(
                        c,
                        r,
                        fmt.format(values[r, c]),
                        ha="center",
                        va="center",
                        fontsize=CAPTION_SIZE,
                    )
    ax.set_xlim(-0.5, size_w - 0.5)
    ax.set_ylim(size_h - 0.5, -0.5)
    ax.set_xticks(range(size_w))
    ax.set_yticks(range(size_h))
    ax.set_xticks(np.arange(-0.5, size_w), minor=True)
    ax.set_yticks(np.arange(-0.5, size_h), minor=True)
    ax.grid(True, which="minor", linewidth=0.4, color="0.6")
    ax.tick_params(labelsize=FONT_SIZE, which="both", length=0)
    ax.set_aspect("equal")
    return ax


def draw_region(ax: Axes, box: Any, colour: Any = "tab:blue", **kwargs: Any) -> Axes:
    """One (x1, y1, x2, y2) rectangle drawn exactly where it is, in the axes' coordinates
    (a box scaled to a :func:`feature_grid`; :func:`draw_boxes` is for image pixels)."""
    x1, y1, x2, y2 = (float(v) for v in _np(box).reshape(4))
    kwargs.setdefault("linewidth", 1.2)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, **kwargs))
    return ax


def draw_bins(ax: Axes, cells: Any, colours: Sequence[Any] | None = None, **kwargs: Any) -> Axes:
    """RoIPool's bins over a :func:`feature_grid`: ``cells`` is ``(ph, pw, 4)`` half-open
    cell ranges ``(x_start, y_start, x_end, y_end)`` (``ops.roipool.roi_pool_cells``). Each
    bin is outlined just inside its cells, alternately inset, so overlapping bins stay
    apart; ``colours`` gives one colour per bin (row-major), black by default."""
    flat = _np(cells).reshape(-1, 4)
    kwargs.setdefault("linewidth", 1.0)
    for i, (x0, y0, x1, y1) in enumerate(flat.tolist()):
        inset = 0.05 + 0.06 * (i % 2)
        colour = colours[i] if colours is not None else "black"
        ax.add_patch(
            Rectangle(
                (x0 - 0.5 + inset, y0 - 0.5 + inset),
                x1 - x0 - 2 * inset,
                y1 - y0 - 2 * inset,
                fill=False,
                edgecolor=colour,
                **kwargs,
            )
        )
    return ax


def draw_points(
    ax: Axes, points: Any, colour: Any = "tab:red", marker: str = "o", size: float = 8
) -> Axes:
    """Sampling points ``(..., 2)`` as (x, y) on a :func:`feature_grid`."""
    flat = _np(points).reshape(-1, 2)
    ax.scatter(flat[:, 0], flat[:, 1], s=size, color=colour, marker=marker, zorder=3)
    return ax


def value_grid(
    values: Any,
    *,
    ax: Axes | None = None,
    fmt: str = "{:.2f}",
    colours: Sequence[Any] | None = None,
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Axes:
    """A small (H, W) array as a table of numbers on lightly shaded cells (a pooled RoI);
    ``colours`` frames each cell (row-major), matching the bins it came from."""
    values = _np(values)
    h, w = values.shape
    ax = _figure_axes(ax, (0.6 * w + 0.5, 0.6 * h + 0.5))
    ax.imshow(values, cmap="Greys", alpha=0.3, vmin=vmin, vmax=vmax)
    for i in range(h):
        for j in range(w):
            ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=FONT_SIZE)
            if colours is not None:
                ax.add_patch(
                    Rectangle(
                        (j - 0.45, i - 0.45),
                        0.9,
                        0.9,
                        fill=False,
                        edgecolor=colours[i * w + j],
                        linewidth=2,
                    )
                )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=FONT_SIZE)
    return ax


def heatmap(
    values: Any,
    *,
    ax: Axes | None = None,
    title: str = "",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
) -> Axes:
    """An (H, W) map (a feature norm, an objectness map) with its colour scale beside it,
    so a reader can tell what the colours mean."""
    ax = _figure_axes(ax, (2.2, 2.0))
    im = ax.imshow(_np(values), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=FONT_SIZE)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=FONT_SIZE)
    return ax


# ---------------------------------------------------------------------------------------
# One setting of the book's explorers (chapters 01, 04, 05, 06): each function computes with
# the library and draws; rcnn_steps.explorers puts sliders on its arguments.

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


# ---------------------------------------------------------------------------------------
# Architecture diagrams


#: Fill and edge of a diagram's stages: as before, and new since the previous detector.
_STAGE_COLOURS = {False: ("#e8eef6", "#5b7391"), True: ("#ffe2b8", "#d9822b")}


def draw_stages(
    stages: Sequence[dict[str, Any]],
    previous: Sequence[dict[str, Any]] | None = None,
    *,
    title: str = "",
    previous_name: str = "the previous detector",
    ax: Axes | None = None,
) -> Axes:
    """A detector's architecture, top to bottom: one box per stage (its ``title`` in bold,
    its ``detail``, the real shapes, below), arrows in the order data flows, and the
    ``branch`` stages (Mask R-CNN's mask and keypoint heads) beside the box branch, fed
    by the detections. ``stages`` come from the detector itself (``FasterRCNN.stages``,
    ``FastRCNN.stages``, ``rcnn.rcnn_stages``), so the drawing cannot disagree with the
    code. Given ``previous`` (another detector's stages), every stage whose job
    (``key``) is new or done another way (``title``) is drawn highlighted, and the
    stages it no longer has are named at the top right: what this chapter's idea
    changed."""
    changed, gone = stage_changes(stages, previous or ())
    main = [s for s in stages if not s.get("branch")]
    side = [s for s in stages if s.get("branch")]
    top = (-1.05 if gone else -0.75) if previous is not None else -0.55
    if ax is None:
        _, ax = plt.subplots(
            figsize=(9.0 if side else 5.6, 0.9 * (len(main) - top - 0.45)), dpi=DPI
        )
    ax.set_xlim(0, 2.0 if side else 1.0)
    ax.set_ylim(len(main) - 0.45, top)
    ax.axis("off")

    def box(x: float, y: float, s: dict[str, Any]) -> None:
        fill, edge = _STAGE_COLOURS[previous is not None and s["key"] in changed]
        ax.add_patch(FancyBboxPatch((x - 0.47, y - 0.36), 0.94, 0.72, facecolor=fill,
                                    edgecolor=edge, boxstyle="round,pad=0,rounding_size=0.05",
                                    linewidth=1.2))  # fmt: skip
        ax.text(
            x, y - 0.13, s["title"], ha="center", va="center", fontsize=TITLE_SIZE, weight="bold"
        )
        ax.text(x, y + 0.17, s["detail"], ha="center", va="center", fontsize=FONT_SIZE,
                family="monospace")  # fmt: skip

    def arrow(start: tuple[float, float], end: tuple[float, float]) -> None:
        style = dict(arrowstyle="-|>", mutation_scale=10, color="#44546a", linewidth=1.0)
        ax.add_patch(FancyArrowPatch(start, end, shrinkA=0, shrinkB=0, **style))

    for i, s in enumerate(main):
        box(0.5, i, s)
        if i:
            arrow((0.5, i - 1 + 0.36), (0.5, i - 0.36))
    feeds = next((i for i, s in enumerate(main) if s["key"] == "detections"), len(main) - 1)
    for j, s in enumerate(side):  # stacked upwards from the stage that feeds them
        y = feeds - (len(side) - 1 - j) * 0.95
        box(1.5, y, s)
        arrow((0.97, feeds), (1.03, y))
    if previous is not None:
        fill, edge = _STAGE_COLOURS[True]
        key = FancyBboxPatch((0.03, top + 0.08), 0.05, 0.16, facecolor=fill, edgecolor=edge,
                             boxstyle="square,pad=0")  # fmt: skip
        ax.add_patch(key)
        ax.text(
            0.1,
            top + 0.16,
            f"new or changed since {previous_name}",
            fontsize=FONT_SIZE,
            va="center",
        )
        if gone:  # a stage the idea made unnecessary
            ax.text(0.03, top + 0.46, "gone: " + "; ".join(gone), fontsize=FONT_SIZE, va="center",
                    style="italic")  # fmt: skip
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    return ax
