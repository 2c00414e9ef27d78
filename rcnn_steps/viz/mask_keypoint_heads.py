"""What Mask R-CNN's mask and keypoint heads learn and predict (chapter 07): a mask
target cut out along its RoI (:func:`draw_mask_target`), the same mask logits read by a
per-class sigmoid or a per-pixel softmax (:func:`plot_mask_probabilities`), keypoints as
one-hot ``m x m`` targets (:func:`draw_keypoint_targets`) and the predicted keypoint
heatmaps of one box (:func:`draw_keypoint_heatmaps`). Each returns a whole figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LogNorm

from rcnn_steps.modeling.keypoint_head import heatmap_entropy
from rcnn_steps.viz.images import draw_boxes, draw_keypoints, draw_masks, show_image
from rcnn_steps.viz.style import CAPTION_SIZE, DPI, FONT_SIZE, _np


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
