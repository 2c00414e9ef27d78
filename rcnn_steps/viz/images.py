"""Images with what is on them: an image (:func:`show_image`), boxes with class names and
scores (:func:`draw_boxes`), masks as coloured overlays (:func:`draw_masks`), keypoints with
their skeleton (:func:`draw_keypoints`), a dataset target or a model's output drawn whole
(:func:`draw_target`, :func:`draw_detections` over the ground truth, :func:`draw_instances`
for Mask R-CNN), and a grid of small panels to lay several side by side
(:func:`image_grid`). Boxes are xyxy in image pixels; pixel ``i`` covers ``[i, i + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from rcnn_steps.viz.style import CAPTION_SIZE, DPI, FONT_SIZE, _axes, _np, class_colour


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
