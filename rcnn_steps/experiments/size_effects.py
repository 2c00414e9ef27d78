"""Does an effect shrink toward the paper's as objects span more feature cells?

Chapter 08's size prediction: our Mask R-CNN ablation effects are several times the paper's
because our objects span a few cells of the feature map their RoIs are pooled from, where
COCO's span four times as many. The test draws the same scenes at 128 and 256 px
(:mod:`rcnn_steps.experiments.datasets`; anchors and FPN's s0 scaled with the images, so
every object is pooled from the same level and only its size in cells changes), runs the
same ablation grid on both, and puts each effect, divided by the paper's, against the
median object size in cells at each resolution (:func:`size_effect_points`, drawn by
:func:`rcnn_steps.viz.size_effects`). The prediction holds if the ratio falls toward 1 as
the objects grow.

The effects (:data:`SIZE_EFFECTS`), each on the map that the paper's argument names:

- RoIAlign over RoIPool (Mask R-CNN Table 2(c), mask AP): RoIPool's rounding costs up to
  a cell at each side of a RoI, pooled from its FPN level (eq. 1);
- the per-class sigmoid over the softmax (Table 2(b), mask AP), the same RoIs;
- FPN over C4 (Table 2(a), mask AP): the C4 model reads every RoI from one stride-16 map,
  so its objects' size in cells there is what FPN's finer levels make up for.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from rcnn_steps.experiments.ablations import effect_records
from rcnn_steps.modeling.fpn import level_number
from rcnn_steps.modeling.poolers import LevelMapper, roi_size_in_cells

__all__ = ["SIZE_EFFECTS", "median_cells", "size_effect_points"]

#: ``(table, baseline, variant, the map its RoIs are pooled from, label)``: ``"fpn"`` the
#: RoI's FPN level (eq. 1), ``"c4"`` the single stride-16 map of the C4 design.
SIZE_EFFECTS: tuple[tuple[str, str, str, str, str], ...] = (
    ("mrcnn_2c", "roipool", "roialign_avg", "fpn", "RoIAlign over RoIPool"),
    ("mrcnn_2b", "softmax", "sigmoid", "fpn", "sigmoid over softmax masks"),
    ("mrcnn_2a", "c4", "fpn", "c4", "FPN over C4"),
)


def median_cells(boxes: Tensor, config: Any, pooled_from: str) -> float:
    """The median side, in feature cells, of ``boxes`` (``(R, 4)`` xyxy, image pixels) on
    the map each is pooled from: its FPN level by eq. (1) with ``config``'s s0 and k0
    (``"fpn"``), or ``config.feature_stage``'s single map (``"c4"``: stride 16)."""
    if pooled_from == "fpn":
        mapper = LevelMapper(
            level_number(config.fpn_roi_levels[0]),
            level_number(config.fpn_roi_levels[-1]),
            config.roi_canonical_size,
            config.roi_canonical_level,
        )
        cells = roi_size_in_cells(boxes, mapper)[0]
    elif pooled_from == "c4":
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        cells = (wh[:, 0] * wh[:, 1]).sqrt() / 2 ** level_number(config.feature_stage)
    else:
        raise ValueError(f"pooled_from is 'fpn' or 'c4', got {pooled_from!r}")
    return float(cells.median())


def size_effect_points(
    scales: Mapping[str, Mapping[str, Any]],
    effects: Sequence[tuple[str, str, str, str, str]] = SIZE_EFFECTS,
    *,
    reference: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One point per (effect, scale) that ran: our effect over the paper's against the
    objects' median size in cells.

    ``scales``: ``{"128": {"grids": {table: read_grid_results(...)}, "boxes": (R, 4) val
    boxes at that resolution, "configs": {"fpn": config, "c4": config}}, "256": ...}``;
    a table missing from a scale's ``grids``, or a setting not run there, gives no point.

    ``reference``: ``{"boxes", "configs"}`` of the paper's case (our objects scaled to
    COCO's 800 px, the paper's s0 = 224), where the ratio is 1 by definition; each record
    then has ``"reference_cells"``, the median size in cells on the same map there.

    Returns records ``{"effect", "table", "scale", "cells", "ours" (mean over the seeds
    both settings ran, AP points), "ours_min", "ours_max" (over those seeds), "paper"
    (the paper's effect, points), "ratio" (ours / paper), "seeds", "metric",
    "reference_cells" (None without ``reference``)}``."""
    points = []
    for table, baseline, variant, pooled_from, label in effects:
        for scale, held in scales.items():
            grid = held["grids"].get(table)
            if grid is None or not all(grid["summary"][n].get("n") for n in (baseline, variant)):
                continue
            (record,) = effect_records(grid, baseline, [variant], metric="AP")
            ours = record["ours"]
            mean = statistics.fmean(ours)
            points.append({
                "effect": label, "table": table, "scale": scale,
                "cells": median_cells(held["boxes"], held["configs"][pooled_from], pooled_from),
                "ours": mean, "ours_min": min(ours), "ours_max": max(ours),
                "paper": record["paper"],
                "ratio": None if not record["paper"] else mean / record["paper"],
                "seeds": record["seeds"], "metric": record["metric"],
                "reference_cells": None if reference is None else median_cells(
                    reference["boxes"], reference["configs"][pooled_from], pooled_from),
            })  # fmt: skip
    return points
