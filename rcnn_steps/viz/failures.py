"""What the final model gets wrong (chapter 08): :func:`failure_gallery` draws one panel
per failure of :meth:`~rcnn_steps.evaluation.ErrorSummary.failures`, the object and the
detection concerned on the image, titled with the failure's kind and what was detected on
what.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes

from rcnn_steps.viz.images import draw_boxes, image_grid, show_image
from rcnn_steps.viz.style import FONT_SIZE, _np, class_colour

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
