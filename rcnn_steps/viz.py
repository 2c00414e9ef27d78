"""Drawing: images with boxes, labels and scores, masks as coloured overlays, keypoints with
their skeleton, and sets of anchors or proposals (first used in chapter 00).

Every function draws onto a matplotlib ``Axes`` (made for you when ``ax`` is None) and
returns it, so chapters can lay several views side by side. Figures are kept small because
they are committed inside the notebooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

__all__ = [
    "class_colour",
    "draw_boxes",
    "draw_detections",
    "draw_instances",
    "draw_keypoint_targets",
    "draw_keypoints",
    "draw_mask_target",
    "draw_masks",
    "draw_target",
    "image_grid",
    "plot_mask_probabilities",
    "plot_stage_times",
    "show_image",
]

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
        _, ax = plt.subplots(figsize=(size, size), dpi=80)
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
        ax.set_title(title, fontsize=9)
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
                fontsize=6,
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
) -> Axes:
    """Detections above ``score_threshold`` (solid, captioned with score) over the ground
    truth (dashed white), so misses and false positives can be seen at a glance."""
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
    fig, axes = plt.subplots(1, panels, figsize=(2.6 * panels, 2.6), dpi=80)
    show_image(image, ax=axes[0], title="RoI and its object's mask")
    draw_masks(axes[0], _np(gt_mask)[None], [label], alpha=0.45)
    draw_boxes(axes[0], _np(box)[None], colour="yellow")
    t = _np(target)
    im = axes[1].imshow(t, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(f"{t.shape[0]} x {t.shape[1]} target", fontsize=9)
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
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n + 0.8, 4.0), dpi=80, squeeze=False)
    for row, (probs, name) in enumerate(((sigmoid, "sigmoid"), (softmax, "softmax"))):
        p = _np(probs)
        for col, k in enumerate(classes):
            ax = axes[row, col]
            im = ax.imshow(p[k], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            label = class_names[k] if class_names is not None else str(k)
            ax.set_title(f"{name}: {label}", fontsize=8)
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
    fig, axes = plt.subplots(1, 1 + len(show), figsize=(2.5 * (1 + len(show)), 2.6), dpi=80)
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
        ax.set_title(f"{name}: one-hot {heatmap_size}x{heatmap_size}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_stage_times(stage_seconds: dict[str, float], ax: Axes | None = None) -> Axes:
    """Horizontal bars: milliseconds per test-time stage (a model's ``inspect()``
    ``stage_seconds``), in the order the stages run."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 0.45 * len(stage_seconds) + 0.8), dpi=80)
    names = list(stage_seconds)[::-1]
    ms = [stage_seconds[n] * 1e3 for n in names]
    ax.barh(names, ms, color="tab:blue")
    for y, v in enumerate(ms):
        ax.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    ax.set_xlabel("milliseconds per image")
    ax.set_xlim(0, max(ms) * 1.25 if ms else 1)
    return ax


def image_grid(
    n: int, cols: int = 4, size: float = 2.2, dpi: int = 80
) -> tuple[plt.Figure, list[Axes]]:
    """A figure with ``n`` small panels in rows of ``cols``; returns (figure, axes list)."""
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), dpi=dpi, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]
