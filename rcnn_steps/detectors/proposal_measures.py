"""How good a set of proposals is (chapter 02): recall, and the paper's MABO.

:func:`proposal_recall` is the share of ground-truth boxes that some proposal among each
image's first ``n`` covers at IoU >= t (every box counts the same);
:func:`proposal_quality` is what Uijlings et al. report (section 5): the Average Best
Overlap of each class and its recall at IoU > 0.5, and their means over the classes
(MABO), beside the paper's own figures on PASCAL VOC 2007 (:data:`PAPER_VOC2007`). They
measure any proposals: ours, OpenCV's. :mod:`rcnn_steps.detectors.selective_search`
re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rcnn_steps.ops import box_iou


def proposal_recall(
    proposals: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    num_proposals: Sequence[int] = (10, 30, 100, 300, 1000, 2000),
    iou_thresholds: Sequence[float] = (0.5, 0.7),
) -> np.ndarray:
    """Recall of ranked proposals: the share of ground-truth boxes (over all images)
    covered by at least one of an image's first ``n`` proposals at IoU >= t.

    Args:
        proposals: per image, ``(K_i, 4)`` ranked boxes xyxy (fewer than ``n`` is fine).
        gt_boxes: per image, ``(G_i, 4)`` ground-truth boxes xyxy.

    Returns:
        ``(len(iou_thresholds), len(num_proposals))`` recalls in [0, 1].
    """
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"{len(proposals)} proposal lists for {len(gt_boxes)} images")
    total = sum(len(g) for g in gt_boxes)
    if total == 0:
        raise ValueError("no ground-truth boxes: recall is undefined")
    thresholds = torch.as_tensor(list(iou_thresholds), dtype=torch.float64)
    hits = np.zeros((len(iou_thresholds), len(num_proposals)))
    for props, gts in zip(proposals, gt_boxes, strict=True):
        if len(gts) == 0:
            continue
        props = torch.as_tensor(props, dtype=torch.float64).reshape(-1, 4)
        gts = torch.as_tensor(gts, dtype=torch.float64).reshape(-1, 4)
        if len(props) == 0:
            continue
        iou = box_iou(gts, props).nan_to_num(0.0)  # (G, K)
        best = torch.cummax(iou, dim=1).values  # best IoU among the first k + 1
        for j, n in enumerate(num_proposals):
            b = best[:, min(n, props.shape[0]) - 1]  # (G,)
            hits[:, j] += (b[None, :] >= thresholds[:, None]).sum(1).numpy()
    return hits / total


#: What Uijlings et al. report for selective search on PASCAL VOC 2007 test (IJCV 2013,
#: Table 5): mean average best overlap, recall at IoU > 0.5 and boxes per image. "quality"
#: is confirmed by the paper's abstract ("99% recall and a Mean Average Best Overlap of
#: 0.879 at 10,097 locations"); the "fast" row (0.804, 0.968, 2,134) is the figure we were
#: given for Table 5 and could not check against a copy of the table.
PAPER_VOC2007 = {
    "fast": {"mabo": 0.804, "recall@0.5": 0.968, "num_proposals": 2134},
    "quality": {"mabo": 0.879, "recall@0.5": 0.991, "num_proposals": 10097},
}


def proposal_quality(
    proposals: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor] | None = None,
    max_proposals: int | None = 2000,
) -> dict[str, Any]:
    """The paper's measures of proposal quality (section 5), over a set of images.

    The best overlap of a ground-truth box ``g`` is its largest IoU with any proposal of its
    image (0 when the image has none). For each class ``c`` with ground-truth boxes ``G_c``:

    - Average Best Overlap ``ABO_c = 1/|G_c| sum_{g in G_c} max_{l in L} IoU(g, l)``;
    - recall ``R_c``: the share of ``G_c`` whose best overlap exceeds 0.5 (PASCAL's
      criterion, strictly greater, as in the authors' evaluation code).

    MABO is the mean of ``ABO_c`` over the classes and recall the mean of ``R_c``: every
    class counts the same, however many boxes it has (the authors' ``demo.m`` prints both
    means). :func:`proposal_recall` counts every box the same instead.

    Args:
        proposals: per image, ``(K_i, 4)`` ranked boxes xyxy.
        gt_boxes: per image, ``(G_i, 4)`` ground-truth boxes xyxy.
        gt_labels: per image, ``(G_i,)`` class labels; None puts every box in one class
            (MABO is then the mean best overlap of all boxes).
        max_proposals: keep each image's first this many proposals (None: all).

    Returns:
        ``{"mabo", "recall@0.5", "num_proposals" (mean per image, after the cut),
        "num_gt_boxes", "abo_per_class", "recall_per_class"}`` (per class: ``{label: value}``).
    """
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"{len(proposals)} proposal lists for {len(gt_boxes)} images")
    if gt_labels is None:
        gt_labels = [torch.zeros(len(g), dtype=torch.int64) for g in gt_boxes]
    if len(gt_labels) != len(gt_boxes):
        raise ValueError(f"{len(gt_labels)} label lists for {len(gt_boxes)} images")
    best_overlaps, labels, counts = [], [], []
    for props, gts, labs in zip(proposals, gt_boxes, gt_labels, strict=True):
        props = torch.as_tensor(props, dtype=torch.float64).reshape(-1, 4)[:max_proposals]
        gts = torch.as_tensor(gts, dtype=torch.float64).reshape(-1, 4)
        labs = torch.as_tensor(labs, dtype=torch.int64).reshape(-1)
        if len(labs) != len(gts):
            raise ValueError(f"{len(labs)} labels for {len(gts)} ground-truth boxes")
        counts.append(len(props))
        if len(props) == 0 or len(gts) == 0:
            best = torch.zeros(len(gts), dtype=torch.float64)
        else:
            best = box_iou(gts, props).nan_to_num(0.0).max(1).values  # (G,)
        best_overlaps.append(best)
        labels.append(labs)
    best, labels = torch.cat(best_overlaps), torch.cat(labels)
    if len(best) == 0:
        raise ValueError("no ground-truth boxes: MABO and recall are undefined")
    abo, recall = {}, {}
    for c in sorted(labels.unique().tolist()):
        of_class = best[labels == c]
        abo[c] = float(of_class.mean())
        recall[c] = float((of_class > 0.5).double().mean())
    return {
        "mabo": float(np.mean(list(abo.values()))),
        "recall@0.5": float(np.mean(list(recall.values()))),
        "num_proposals": float(np.mean(counts)) if counts else 0.0,
        "num_gt_boxes": len(best),
        "abo_per_class": abo,
        "recall_per_class": recall,
    }
