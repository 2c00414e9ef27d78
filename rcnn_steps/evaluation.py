"""How good is a detector? Precision, recall and average precision (chapter 00).

Chapter 00, "Objects, boxes and scores", teaches this module in three steps:

1. **The PR curve and AP by hand.** Rank the detections of one class by score, mark each
   as a true or a false positive, and read off a precision/recall curve
   (:func:`precision_recall`). Average precision (AP) summarises the curve; the three
   definitions in use are here side by side: PASCAL VOC 2007's 11-point interpolated AP
   (:func:`average_precision_voc11`), VOC 2010+'s area under the interpolated curve
   (:func:`average_precision_area`) and COCO's 101-point interpolated AP
   (:func:`average_precision_coco101`).
2. **Matching.** Whether a detection is a true positive depends on greedy matching at an
   IoU threshold, with COCO's rules for crowd regions and ignored objects
   (:func:`match_detections`). :func:`coco_box_ap_from_scratch` puts it all together and
   reproduces pycocotools' box AP (AP averaged over IoU 0.50:0.05:0.95) without it.
3. **The real evaluator.** :func:`coco_evaluate` runs pycocotools' ``COCOeval`` for boxes,
   masks and keypoints, quietly, with area ranges scaled to our small images
   (:func:`scaled_area_ranges`); :func:`detections_to_coco` turns a model's outputs into
   the COCO result dicts it reads.

Boxes follow COCO inside this module: ground truths and result dicts carry ``[x, y, w, h]``
(``xywh``); model outputs (and the rest of the library) use ``[x1, y1, x2, y2]`` (``xyxy``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import numbers
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COCO_AREA_RANGES",
    "COCO_IOU_THRESHOLDS",
    "COCO_RECALL_THRESHOLDS",
    "Matches",
    "as_coco",
    "average_precision_area",
    "average_precision_coco101",
    "average_precision_voc11",
    "coco_box_ap_from_scratch",
    "coco_evaluate",
    "detections_to_coco",
    "match_detections",
    "precision_recall",
    "scaled_area_ranges",
    "simulate_detections",
    "subset_ground_truth",
]

# ---------------------------------------------------------------------------------------
# COCO's constants

#: COCO's IoU thresholds 0.50, 0.55, ..., 0.95, built exactly as ``COCOeval`` builds them
#: (``np.linspace``, not ``np.arange``, whose steps drift).
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)

#: COCO's 101 recall thresholds 0, 0.01, ..., 1, built exactly as ``COCOeval`` builds them.
#: Ten of them are a hair above the decimal they stand for (0.35, 0.41, 0.47, 0.57, 0.69,
#: 0.70, 0.82, 0.83, 0.94, 0.95 come out as e.g. 0.7000000000000001), so a recall of
#: exactly 7/10 does *not* reach the "0.70" threshold. We keep them bit-for-bit so that our
#: AP equals pycocotools' to the last digit.
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1)

#: COCO's object-size buckets (areas in pixels^2), defined for images about 640 px on a
#: side. Both ends of each range are inclusive, as in ``COCOeval``: an object of area
#: exactly 32^2 counts as both small and medium.
COCO_AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}

# metric-name suffixes for the standard area labels: APs, APm, APl
_AREA_SUFFIX = {"small": "s", "medium": "m", "large": "l"}


def scaled_area_ranges(
    image_size: float, reference_size: float = 640
) -> dict[str, tuple[float, float]]:
    """COCO's small/medium/large area ranges scaled to images of side ``image_size``.

    COCO calls an object small below 32^2 px^2 and large above 96^2 px^2, thresholds chosen
    for COCO's images, about 640 px on the long side: a "small" object covers less than
    about 0.25% of the image. On our 128 px images every object would be "small" or
    "medium" under those absolute numbers, and APl would be undefined. What the buckets
    mean is a *fraction of the image*, so we keep the fraction: areas scale with the square
    of the side, so every bound is multiplied by ``(image_size / reference_size) ** 2``.
    At 128 px, small is below 6.4^2 ~ 41 px^2 and large above 19.2^2 ~ 369 px^2. With
    ``image_size == reference_size`` (real COCO) the ranges are COCO's own.

    Returns ``{"all": (lo, hi), "small": ..., "medium": ..., "large": ...}``, the labels
    ``COCOeval`` uses (its keypoint evaluation uses only ``all``, ``medium``, ``large``).
    """
    if image_size <= 0 or reference_size <= 0:
        raise ValueError(f"sizes must be positive, got {image_size=} and {reference_size=}")
    factor = (float(image_size) / float(reference_size)) ** 2
    return {label: (lo * factor, hi * factor) for label, (lo, hi) in COCO_AREA_RANGES.items()}


# ---------------------------------------------------------------------------------------
# Step 1: the precision/recall curve and three ways to average it


def precision_recall(
    scores: Sequence[float] | np.ndarray,
    is_true_positive: Sequence[bool] | np.ndarray,
    num_ground_truth: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The precision/recall curve of one class (chapter 00).

    Args:
        scores: ``(D,)`` confidence of each detection.
        is_true_positive: ``(D,)`` whether each detection matched a ground-truth object
            (see :func:`match_detections`); the others are false positives. Detections
            that should not count either way (matched to a crowd region) are left out
            by the caller.
        num_ground_truth: ``G``, the number of objects to find (``> 0``).

    Returns:
        ``(precision, recall)``, two ``(D,)`` float arrays, one point per detection in the
        order of decreasing score: after the ``i`` highest-scoring detections,
        ``precision[i-1] = TP / i`` and ``recall[i-1] = TP / G``. Recall never decreases
        along the arrays; precision zig-zags.

    Equal scores keep their input order (a stable sort, as ``COCOeval`` does), so the curve
    is reproducible; which of two tied detections counts first does change the curve.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    tp = np.asarray(is_true_positive, dtype=bool).reshape(-1)
    if scores.shape != tp.shape:
        raise ValueError(f"scores {scores.shape} and is_true_positive {tp.shape} differ")
    if num_ground_truth <= 0:
        raise ValueError("recall is undefined without ground truth (num_ground_truth <= 0)")
    order = np.argsort(-scores, kind="mergesort")  # stable: ties keep their input order
    tp = tp[order]
    tp_cum = np.cumsum(tp).astype(np.float64)
    detections_so_far = np.arange(1, len(tp) + 1, dtype=np.float64)
    precision = tp_cum / detections_so_far
    recall = tp_cum / num_ground_truth
    return precision, recall


def _precision_envelope(precision: np.ndarray) -> np.ndarray:
    """Interpolated precision: at each point, the best precision at this recall or higher.

    This makes the curve monotonically decreasing (sweeping right to left), which removes
    its zig-zags: a detector that can reach a higher precision by going further down its
    ranking gets credit for it at every lower recall.
    """
    return np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]


def average_precision_voc11(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC 2007's 11-point interpolated AP (chapter 00).

    ``AP = 1/11 * sum_{t in {0, 0.1, ..., 1}} max{precision[i] : recall[i] >= t}``, the max
    of an empty set being 0 (Everingham et al., IJCV 2010, section 4.2).

    Args:
        recall, precision: ``(D,)`` a PR curve as :func:`precision_recall` returns it.

    The thresholds are the exact decimals ``i / 10``. Many ports (py-faster-rcnn,
    detectron2) loop over ``np.arange(0, 1.1, 0.1)``, whose 0.3, 0.6 and 0.7 come out a
    hair too large, so they drop a point when recall lands exactly on one of them.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    total = 0.0
    for t in np.arange(11) / 10:
        reached = recall >= t
        total += precision[reached].max() if reached.any() else 0.0
    return float(total / 11)


def average_precision_coco101(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO's 101-point interpolated AP at one IoU threshold, as ``COCOeval`` computes it
    (chapter 00).

    1. Make precision monotonically decreasing, sweeping right to left (the envelope).
    2. At each recall threshold ``r`` in ``0, 0.01, ..., 1`` take the envelope's value at
       the first point whose recall is ``>= r`` (``np.searchsorted(..., side="left")``);
       thresholds beyond the highest recall reached score 0.
    3. Average the 101 values.

    COCO's headline AP averages this over IoU thresholds 0.50:0.05:0.95 and over
    categories (:func:`coco_box_ap_from_scratch`).

    Args:
        recall, precision: ``(D,)`` a PR curve, recall non-decreasing.
    """
    recall = np.asarray(recall, dtype=np.float64)
    if recall.size == 0:
        return 0.0
    envelope = _precision_envelope(precision)
    index = np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")
    reached = index < len(recall)
    values = np.zeros(len(COCO_RECALL_THRESHOLDS))
    values[reached] = envelope[index[reached]]
    return float(values.mean())


def average_precision_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC 2010+'s AP: the area under the interpolated PR curve, using every point
    (chapter 00).

    The curve is extended with ``(recall 0, precision 0)`` and ``(recall 1, precision 0)``,
    made monotonically decreasing right to left, and integrated as a step function:
    ``AP = sum_i (r_i - r_{i-1}) * p_interp(r_i)`` over the points where recall changes.
    Unlike the 11- and 101-point versions it has no sampling error.

    Args:
        recall, precision: ``(D,)`` a PR curve, recall non-decreasing.
    """
    recall = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    precision = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    envelope = _precision_envelope(precision)
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1  # where recall moves right
    return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


# ---------------------------------------------------------------------------------------
# Step 2: matching detections to ground truth, COCO's way


def _iou_xywh(dets: np.ndarray, gts: np.ndarray, iscrowd: np.ndarray) -> np.ndarray:
    """IoU between ``(D, 4)`` and ``(G, 4)`` boxes in ``[x, y, w, h]``, as ``(D, G)``.

    For a crowd ground truth (``iscrowd[g]``), the denominator is the *detection's* area,
    not the union: a crowd box marks a region full of objects too many to label, and a
    detection anywhere inside it should neither score nor be penalised, however small it
    is. (The same arithmetic, in the same order, as pycocotools' C ``bbIou``.)
    """
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 4)
    gts = np.asarray(gts, dtype=np.float64).reshape(-1, 4)
    iscrowd = np.asarray(iscrowd, dtype=bool).reshape(-1)
    d, g = dets[:, None, :], gts[None, :, :]
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    overlap = (w > 0) & (h > 0)
    inter = np.where(overlap, w * h, 0.0)
    det_area = d[..., 2] * d[..., 3]
    gt_area = g[..., 2] * g[..., 3]
    union = np.where(iscrowd[None, :], det_area, det_area + gt_area - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)


def _greedy_match(
    ious: np.ndarray, gt_iscrowd: np.ndarray, gt_ignore: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """COCOeval's greedy matching, line for line.

    ``ious`` is ``(D, G)`` with detections sorted by decreasing score and ground truths
    sorted with the ignored ones last. Returns ``(D,)``: the matched gt's column, or -1.
    """
    num_dets, num_gts = ious.shape
    ious = ious.tolist()  # plain lists: this double loop is faster without numpy indexing
    crowd = [bool(c) for c in gt_iscrowd]
    ignore = [bool(i) for i in gt_ignore]
    taken = [False] * num_gts
    matched = [-1] * num_dets
    for d in range(num_dets):
        # an IoU must reach the threshold to count (capped so that a threshold of 1.0
        # still accepts a perfect overlap despite rounding)
        best_iou = min(iou_threshold, 1 - 1e-10)
        best = -1
        for g in range(num_gts):
            # a regular gt is found once; a crowd region can absorb any number of dets
            if taken[g] and not crowd[g]:
                continue
            # already holding a regular gt, and only ignored ones are left: keep it, a
            # real match is better than a better-overlapping ignored one
            if best > -1 and not ignore[best] and ignore[g]:
                break
            # ">=": with equal IoUs the later ground truth wins, as in COCOeval
            if ious[d][g] < best_iou:
                continue
            best_iou, best = ious[d][g], g
        if best > -1:
            matched[d] = best
            taken[best] = True
    return np.asarray(matched, dtype=np.int64)


@dataclass(frozen=True)
class Matches:
    """The outcome of :func:`match_detections`, one entry per detection, in input order.

    Attributes:
        gt_index: ``(D,)`` int, the index (into ``gt_boxes``) of the ground truth each
            detection matched, or -1 for none.
        ignored: ``(D,)`` bool, detections that count neither as true nor false positives
            because they matched a crowd region or an ignored ground truth.
    """

    gt_index: np.ndarray
    ignored: np.ndarray

    @property
    def is_true_positive(self) -> np.ndarray:
        """``(D,)`` matched a ground truth that counts."""
        return (self.gt_index >= 0) & ~self.ignored

    @property
    def is_false_positive(self) -> np.ndarray:
        """``(D,)`` matched nothing (and is not ignored)."""
        return (self.gt_index < 0) & ~self.ignored


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def match_detections(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_iscrowd: np.ndarray | None = None,
    iou_threshold: float = 0.5,
    *,
    gt_ignore: np.ndarray | None = None,
    box_format: str = "xyxy",
) -> Matches:
    """Match the detections of one class in one image to its ground truths, as COCOeval
    does (chapter 00).

    Detections are visited by decreasing score (ties in input order). Each takes the
    best-overlapping ground truth (IoU ``>= iou_threshold``) that no earlier detection
    took, preferring regular ground truths; only if none qualifies may it fall on an
    ignored ground truth or a crowd region, and it is then *ignored* (neither TP nor FP).
    A crowd region can absorb any number of detections, and its IoU is computed against
    the detection's own area (``intersection / area(det)``), so any detection lying inside
    a crowd is absorbed, whatever its size. Everything unmatched is a false positive: a
    second detection of an already-found object is a duplicate, and duplicates are
    errors (this is why detectors need non-maximum suppression).

    Args:
        det_boxes: ``(D, 4)`` detection boxes.
        det_scores: ``(D,)`` their scores.
        gt_boxes: ``(G, 4)`` ground-truth boxes.
        gt_iscrowd: ``(G,)`` bool, crowd regions (always ignored). Default: none.
        iou_threshold: the IoU a match needs.
        gt_ignore: ``(G,)`` bool, further ground truths to ignore (COCO ignores those
            outside the area range being evaluated). Default: none.
        box_format: ``"xyxy"`` (the library's) or ``"xywh"`` (COCO's).

    Returns:
        :class:`Matches`, in the input order of the detections.
    """
    if box_format not in ("xyxy", "xywh"):
        raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")
    convert = _xyxy_to_xywh if box_format == "xyxy" else lambda b: np.asarray(b, np.float64)
    dets = convert(det_boxes).reshape(-1, 4)
    gts = convert(gt_boxes).reshape(-1, 4)
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(dets):
        raise ValueError(f"{len(dets)} boxes but {len(scores)} scores")
    crowd = np.zeros(len(gts), bool) if gt_iscrowd is None else np.asarray(gt_iscrowd, bool)
    ignore = crowd.copy() if gt_ignore is None else crowd | np.asarray(gt_ignore, bool)

    det_order = np.argsort(-scores, kind="mergesort")
    gt_order = np.argsort(ignore, kind="mergesort")  # regular ground truths first
    ious = _iou_xywh(dets[det_order], gts[gt_order], crowd[gt_order])
    matched_sorted = _greedy_match(ious, crowd[gt_order], ignore[gt_order], iou_threshold)

    # back to the caller's order and the caller's gt indices
    gt_index = np.full(len(dets), -1, dtype=np.int64)
    has_match = matched_sorted >= 0
    gt_index[det_order[has_match]] = gt_order[matched_sorted[has_match]]
    ignored = np.zeros(len(dets), dtype=bool)
    ignored[gt_index >= 0] = ignore[gt_index[gt_index >= 0]]
    return Matches(gt_index=gt_index, ignored=ignored)


# ---------------------------------------------------------------------------------------
# Step 2, continued: COCO's box AP without pycocotools


def _load_dataset(coco_gt: Any) -> dict[str, Any]:
    """A COCO ground-truth dict from a dict, a path to a json file, or a ``COCO`` object."""
    if isinstance(coco_gt, Mapping):
        return dict(coco_gt)
    if isinstance(coco_gt, str | os.PathLike):
        return json.loads(Path(coco_gt).read_text())
    if hasattr(coco_gt, "dataset"):  # pycocotools.coco.COCO, without importing it
        return coco_gt.dataset
    raise TypeError(f"expected a COCO dict, a json path or a COCO object, got {type(coco_gt)}")


def _typical_image_size(images: Sequence[Mapping[str, Any]]) -> float | None:
    """The median long side of the images (640 for COCO 2017, 128 for our set)."""
    sides = [max(img["width"], img["height"]) for img in images if "width" in img]
    return float(np.median(sides)) if sides else None


def _resolve_area_ranges(
    area_ranges: Mapping[str, Sequence[float]] | str | None,
    images: Sequence[Mapping[str, Any]],
) -> dict[str, tuple[float, float]]:
    """``None``: COCO's ranges scaled to the images' typical size; ``"coco"``: COCO's
    ranges as they are; a mapping ``{label: (lo, hi)}``: as given (must hold ``"all"``)."""
    if area_ranges is None:
        size = _typical_image_size(images)
        return dict(COCO_AREA_RANGES) if size is None else scaled_area_ranges(size)
    if isinstance(area_ranges, str):
        if area_ranges != "coco":
            raise ValueError(f"area_ranges must be None, 'coco' or a mapping, got {area_ranges!r}")
        return dict(COCO_AREA_RANGES)
    ranges = {str(k): (float(v[0]), float(v[1])) for k, v in area_ranges.items()}
    if "all" not in ranges:
        raise ValueError(f"area_ranges needs an 'all' range, got labels {list(ranges)}")
    return ranges


@dataclass
class _ImageEval:
    """One image, one category, one area range: COCOeval's ``evaluateImg``."""

    scores: np.ndarray  # (D,) sorted by decreasing score, at most max_dets
    matched: np.ndarray  # (T, D) bool
    ignored: np.ndarray  # (T, D) bool
    num_gt: int  # ground truths that count (not crowd, inside the area range)


def _evaluate_image(
    gts: list[Mapping[str, Any]],
    dts: list[Mapping[str, Any]],
    area_range: tuple[float, float],
    max_dets: int,
) -> _ImageEval:
    lo, hi = area_range
    # the best max_dets detections of this image *and this category*
    dt_order = np.argsort([-d["score"] for d in dts], kind="mergesort")[:max_dets]
    dts = [dts[i] for i in dt_order]
    scores = np.array([d["score"] for d in dts], dtype=np.float64)
    dt_boxes = np.array([d["bbox"] for d in dts], dtype=np.float64).reshape(-1, 4)
    # a result's area is its box's (COCO.loadRes sets it to w * h)
    dt_area = dt_boxes[:, 2] * dt_boxes[:, 3]

    # a ground truth's area is its annotation's "area" field (the mask area), not w * h
    gt_area = np.array([g["area"] for g in gts], dtype=np.float64)
    crowd = np.array([bool(g.get("iscrowd", 0)) for g in gts], dtype=bool)
    ignore = crowd | (gt_area < lo) | (gt_area > hi)
    gt_order = np.argsort(ignore, kind="mergesort")  # regular ground truths first
    crowd, ignore = crowd[gt_order], ignore[gt_order]
    gt_boxes = np.array([gts[i]["bbox"] for i in gt_order], dtype=np.float64).reshape(-1, 4)

    ious = _iou_xywh(dt_boxes, gt_boxes, crowd)
    outside = (dt_area < lo) | (dt_area > hi)
    matched = np.zeros((len(COCO_IOU_THRESHOLDS), len(dts)), dtype=bool)
    ignored = np.zeros_like(matched)
    for t, threshold in enumerate(COCO_IOU_THRESHOLDS):
        gt_index = _greedy_match(ious, crowd, ignore, threshold)
        matched[t] = gt_index >= 0
        # ignored: matched a crowd or an out-of-range gt, or unmatched and itself out of
        # range (a small false positive must not hurt APl, and vice versa)
        ignored[t, matched[t]] = ignore[gt_index[matched[t]]]
        ignored[t, ~matched[t]] = outside[~matched[t]]
    return _ImageEval(scores, matched, ignored, int(np.count_nonzero(~ignore)))


def coco_box_ap_from_scratch(
    coco_gt: Any,
    detections: Sequence[Mapping[str, Any]],
    area_ranges: Mapping[str, Sequence[float]] | str | None = None,
    max_dets: int = 100,
) -> dict[str, float]:
    """COCO box AP without pycocotools, reproducing ``COCOeval(iouType="bbox")`` exactly
    (chapter 00).

    The protocol, step by step:

    1. For every category ``k``, every area range ``a`` and every image, keep the image's
       ``max_dets`` best detections *of that category* (the cap is per image and per
       category), and mark as ignored the ground truths that are crowds or whose
       ``area`` field lies outside the range (both ends inclusive).
    2. Match greedily at each IoU threshold 0.50, 0.55, ..., 0.95
       (:func:`match_detections`). Detections matched to an ignored ground truth, and
       unmatched detections whose box area lies outside the range, are ignored.
    3. Pool the detections of all images (in increasing image id, then sorted by
       decreasing score with a stable mergesort, so ties keep that order), drop the
       ignored ones, and compute the PR curve against the number of non-ignored ground
       truths (:func:`precision_recall`) and its 101-point AP
       (:func:`average_precision_coco101`).
    4. AP is the mean over IoU thresholds and over the categories that have at least one
       non-ignored ground truth (the others are -1 in COCOeval and left out of the mean);
       AP50 and AP75 use one threshold; APs/APm/APl use the area ranges. AR is the recall
       reached with ``max_dets`` detections, averaged the same way.

    Args:
        coco_gt: the ground truth: a COCO dict, a path to a COCO json, or a
            ``pycocotools.coco.COCO``. Ground truths need ``bbox``, ``area`` and
            ``iscrowd``.
        detections: result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h],
            "score"}``. Detections of unknown categories are skipped (as COCOeval does);
            an unknown image is an error.
        area_ranges: ``None`` (default): COCO's ranges scaled to the images' size
            (:func:`scaled_area_ranges`); ``"coco"``: COCO's unscaled ranges; or a mapping
            ``{"all": (lo, hi), "small": ..., ...}``.
        max_dets: detections kept per image and category.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", f"AR{max_dets}", "ARs", "ARm",
        "ARl"}`` as floats in [0, 1], or -1 where no category has a ground truth in range.
        With the default ``max_dets=100`` they equal COCOeval's ``stats`` of the same name.
    """
    dataset = _load_dataset(coco_gt)
    image_ids = sorted({img["id"] for img in dataset["images"]})
    category_ids = sorted({cat["id"] for cat in dataset["categories"]})
    ranges = _resolve_area_ranges(area_ranges, dataset["images"])
    known_images, known_categories = set(image_ids), set(category_ids)

    gts: dict[tuple[int, int], list] = defaultdict(list)
    for ann in dataset["annotations"]:
        if ann["image_id"] in known_images and ann["category_id"] in known_categories:
            gts[ann["image_id"], ann["category_id"]].append(ann)
    dts: dict[tuple[int, int], list] = defaultdict(list)
    for det in detections:
        if det["image_id"] not in known_images:
            raise ValueError(f"detection for image {det['image_id']}, not in the ground truth")
        if det["category_id"] in known_categories:
            dts[det["image_id"], det["category_id"]].append(det)

    num_t, num_k, num_a = len(COCO_IOU_THRESHOLDS), len(category_ids), len(ranges)
    ap = np.full((num_t, num_k, num_a), -1.0)  # -1: undefined (no ground truth)
    recall = np.full((num_t, num_k, num_a), -1.0)
    for k, cat in enumerate(category_ids):
        for a, area_range in enumerate(ranges.values()):
            per_image = [
                _evaluate_image(gts[img, cat], dts[img, cat], area_range, max_dets)
                for img in image_ids
                if gts[img, cat] or dts[img, cat]
            ]
            num_gt = sum(e.num_gt for e in per_image)
            if num_gt == 0:
                continue  # AP undefined for this category: stays -1
            scores = np.concatenate([e.scores for e in per_image])
            for t in range(num_t):
                matched = np.concatenate([e.matched[t] for e in per_image])
                ignored = np.concatenate([e.ignored[t] for e in per_image])
                keep = ~ignored  # ignored detections are neither TP nor FP: drop them
                prec, rec = precision_recall(scores[keep], matched[keep], num_gt)
                ap[t, k, a] = average_precision_coco101(rec, prec)
                recall[t, k, a] = rec[-1] if rec.size else 0.0

    def mean_defined(values: np.ndarray) -> float:
        defined = values[values > -1]
        return float(defined.mean()) if defined.size else -1.0

    labels = list(ranges)
    everything = labels.index("all")
    t50 = int(np.argmin(np.abs(COCO_IOU_THRESHOLDS - 0.5)))
    t75 = int(np.argmin(np.abs(COCO_IOU_THRESHOLDS - 0.75)))
    metrics = {
        "AP": mean_defined(ap[:, :, everything]),
        "AP50": mean_defined(ap[t50, :, everything]),
        "AP75": mean_defined(ap[t75, :, everything]),
    }
    for a, label in enumerate(labels):
        if label != "all":
            metrics[f"AP{_AREA_SUFFIX.get(label, '_' + label)}"] = mean_defined(ap[:, :, a])
    metrics[f"AR{max_dets}"] = mean_defined(recall[:, :, everything])
    for a, label in enumerate(labels):
        if label != "all":
            metrics[f"AR{_AREA_SUFFIX.get(label, '_' + label)}"] = mean_defined(recall[:, :, a])
    return metrics


# ---------------------------------------------------------------------------------------
# Step 3: the real evaluator, pycocotools' COCOeval


def _quiet(verbose: bool):
    # pycocotools prints progress lines ("index created!", "DONE (t=0.01s)"): noise in a
    # notebook, and volatile output for nbval
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def as_coco(coco_gt: Any, verbose: bool = False):
    """A ``pycocotools.coco.COCO`` from a ``COCO`` (returned as is), a path to an
    annotation json, or a dict (deep-copied, since COCOeval edits annotations in place)."""
    from pycocotools.coco import COCO

    if isinstance(coco_gt, COCO):
        return coco_gt
    with _quiet(verbose):
        if isinstance(coco_gt, str | os.PathLike):
            return COCO(str(coco_gt))
        if isinstance(coco_gt, Mapping):
            coco = COCO()
            coco.dataset = copy.deepcopy(dict(coco_gt))
            coco.createIndex()
            return coco
    raise TypeError(f"expected a COCO object, a json path or a dict, got {type(coco_gt)}")


def _keypoint_categories(coco) -> list[dict]:
    return [c for c in coco.dataset.get("categories", []) if c.get("keypoints")]


def _oks_sigmas(coco, kpt_oks_sigmas) -> np.ndarray | None:
    """The per-keypoint OKS sigmas: the argument, else the keypoint category's
    ``oks_sigmas``, else ``None`` (COCOeval's 17 person sigmas)."""
    if kpt_oks_sigmas is not None:
        return np.asarray(kpt_oks_sigmas, dtype=np.float64)
    given = [c["oks_sigmas"] for c in _keypoint_categories(coco) if "oks_sigmas" in c]
    if not given:
        return None
    if any(list(s) != list(given[0]) for s in given):
        raise ValueError("keypoint categories disagree on oks_sigmas; pass kpt_oks_sigmas")
    return np.asarray(given[0], dtype=np.float64)


def _prepare_results(detections: list[dict], iou_type: str) -> list[dict]:
    """Copy the result dicts (COCO.loadRes writes into them) and keep what ``iou_type``
    needs."""
    needed = {"bbox": ("bbox", "segmentation"), "segm": ("segmentation",)}
    needed["keypoints"] = ("keypoints",)
    results = []
    for i, det in enumerate(detections):
        if not any(key in det for key in needed[iou_type]):
            raise ValueError(f"detection {i} has none of {needed[iou_type]} for {iou_type!r}")
        det = dict(det)
        if iou_type == "segm":
            # loadRes takes an object's area from its box when a result has one; for masks
            # the area ranges must use the mask's area, so drop the box (detectron2 does too)
            det.pop("bbox", None)
        results.append(det)
    return results


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite_numbers(values: Any) -> bool:
    """A list (tuple, 1-D array) of finite real numbers?"""
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        return False
    return all(_is_number(v) and math.isfinite(v) for v in values)


def _check_detections(detections: list, gt, iou_type: str) -> None:
    """Reject result dicts that COCOeval would score wrong without a word, or fail on with
    a bare error: a missing or non-finite ``score`` (a nan score is ranked last, so a
    false positive with one vanishes), an unknown ``image_id`` or ``category_id``
    (COCOeval drops such detections silently), a ``bbox`` that is not four finite numbers
    with non-negative width and height (a nan box matches any ground truth; a box of
    negative area falls outside every area range, so a false positive with one is
    ignored), and keypoints of the wrong length or non-finite."""
    image_ids = set(gt.getImgIds())
    categories = {c["id"]: c for c in gt.dataset.get("categories", [])}
    for i, det in enumerate(detections):
        if not isinstance(det, Mapping):
            raise TypeError(
                f"detection {i} is a {type(det).__name__}, not a dict; detections are COCO "
                "result dicts {'image_id', 'category_id', 'bbox', 'score'} "
                "(see detections_to_coco)"
            )
        where = f"detection {i} (image_id {det.get('image_id')!r})"
        for key in ("image_id", "category_id", "score"):
            if key not in det:
                raise ValueError(
                    f"{where} has no {key!r}; every COCO result needs 'image_id', "
                    "'category_id' and 'score' (detections_to_coco writes them)"
                )
        image_id, category_id, score = det["image_id"], det["category_id"], det["score"]
        if image_id not in image_ids:
            hint = (
                f"; image ids are ints, this one is a {type(image_id).__name__}"
                if not isinstance(image_id, numbers.Integral)
                else ": evaluate on the split the detections were made for, or restrict "
                "the ground truth with subset_ground_truth"
            )
            raise ValueError(f"{where}: detections for images not in the ground truth{hint}")
        if category_id not in categories:
            raise ValueError(
                f"{where} has category_id {category_id!r}, which is not in the ground "
                f"truth's categories {sorted(categories)}; COCOeval would drop it silently. "
                "Map the model's labels to category ids (detections_to_coco's "
                "label_to_category_id)."
            )
        if not _is_number(score) or not math.isfinite(score):
            raise ValueError(
                f"{where} has score {score!r}; scores must be finite numbers (COCOeval "
                "ranks a nan score last, which hides a false positive): check the model's "
                "outputs for nan"
            )
        if iou_type == "bbox" and "bbox" in det:
            box = det["bbox"]
            if not _finite_numbers(box) or len(box) != 4:
                raise ValueError(
                    f"{where} has bbox {box!r}; a COCO box is four finite numbers [x, y, "
                    "width, height] (a nan box would match any ground truth): check the "
                    "model's outputs for nan or inf"
                )
            if box[2] < 0 or box[3] < 0:
                raise ValueError(
                    f"{where} has bbox {box!r} of negative width or height; COCO boxes are "
                    "[x, y, width, height]: convert [x1, y1, x2, y2] boxes with "
                    "detections_to_coco, which also expects x2 >= x1 and y2 >= y1"
                )
        if iou_type == "keypoints" and "keypoints" in det:
            points = det["keypoints"]
            expected = 3 * len(categories[category_id].get("keypoints", []))
            if not _finite_numbers(points):
                raise ValueError(
                    f"{where} has keypoints that are not all finite numbers; they are a "
                    "flat list [x1, y1, v1, x2, y2, v2, ...]"
                )
            if expected and len(points) != expected:
                raise ValueError(
                    f"{where} has {len(points)} keypoint values; category {category_id} has "
                    f"{expected // 3} keypoints, so it needs {expected} (x, y, v per keypoint)"
                )


def _summarize(coco_eval, iou_type: str, area_labels: list[str]) -> dict[str, float]:
    """Named metrics from ``COCOeval.eval``, computed as ``COCOeval.summarize`` does
    (mean over entries > -1) but at the evaluation's own ``maxDets`` rather than the
    hard-coded 100 (20 for keypoints) of ``summarize``."""
    p = coco_eval.params
    precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
    recall = coco_eval.eval["recall"]  # (T, K, A, M)
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(p.iouThrs - 0.75)))
    everything = area_labels.index("all")
    last = len(p.maxDets) - 1

    def mean_defined(values: np.ndarray) -> float:
        defined = values[values > -1]
        return float(defined.mean()) if defined.size else -1.0

    def ap(t=slice(None), a=everything):
        return mean_defined(precision[t, :, :, a, last])

    def ar(t=slice(None), a=everything, m=last):
        return mean_defined(recall[t, :, a, m])

    by_area = [(a, _AREA_SUFFIX.get(lbl, "_" + lbl)) for a, lbl in enumerate(area_labels)]
    by_area = [(a, s) for a, s in by_area if area_labels[a] != "all"]
    metrics = {"AP": ap(), "AP50": ap(t50), "AP75": ap(t75)}
    metrics.update({f"AP{s}": ap(a=a) for a, s in by_area})
    if iou_type == "keypoints":
        metrics.update({"AR": ar(), "AR50": ar(t50), "AR75": ar(t75)})
    else:
        metrics.update({f"AR{m}": ar(m=i) for i, m in enumerate(p.maxDets)})
    metrics.update({f"AR{s}": ar(a=a) for a, s in by_area})
    return metrics


def _print_summary(metrics: dict[str, float], iou_type: str, max_det: int) -> None:
    print(f"COCO {iou_type} evaluation (maxDets={max_det}):")
    for name, value in metrics.items():
        print(f"  {name:>6} = {value:0.3f}")


def coco_evaluate(
    coco_gt: Any,
    detections: Sequence[Mapping[str, Any]] | str | os.PathLike,
    iou_type: str = "bbox",
    area_ranges: Mapping[str, Sequence[float]] | str | None = None,
    kpt_oks_sigmas: Sequence[float] | None = None,
    max_dets: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Evaluate detections with pycocotools' ``COCOeval`` and return named metrics
    (chapter 00 onwards: every chapter's AP comes from here).

    Args:
        coco_gt: the ground truth: a ``pycocotools.coco.COCO`` (COCOeval edits its
            annotations in place, as it always does), a path to an annotation json, or a
            COCO dict (copied first).
        detections: COCO result dicts (:func:`detections_to_coco`), or a path to a json
            list of them. ``"bbox"`` needs ``bbox``, ``"segm"`` an RLE ``segmentation``,
            ``"keypoints"`` a flat ``keypoints`` list. Empty is allowed (COCO.loadRes is
            not): every metric is then 0, or -1 where there is no ground truth, and a
            ``UserWarning`` says so. Checked before pycocotools sees them: a missing or
            non-finite ``score``, an ``image_id`` or ``category_id`` not in the ground
            truth, a non-finite or negative-size ``bbox`` and non-finite keypoints or a
            wrong number of them raise a ``ValueError`` naming the detection (COCOeval
            would score each of them wrong without a word).
        iou_type: ``"bbox"``, ``"segm"`` or ``"keypoints"``.
        area_ranges: ``None`` (default): COCO's ranges scaled to the images' typical size
            (:func:`scaled_area_ranges`; equal to COCO's own for real COCO); ``"coco"``:
            COCO's unscaled ranges; or a mapping ``{"all": (lo, hi), "small": ...}``.
            Keypoint evaluation keeps COCOeval's labels: ``all``, ``medium``, ``large``.
        kpt_oks_sigmas: ``(K,)`` per-keypoint OKS sigmas. Default: the ``oks_sigmas``
            field of the keypoint category in the ground truth, else COCO's 17 person
            sigmas. Keypoint evaluation covers only categories that list ``keypoints``.
        max_dets: detections kept per image and category; default ``[1, 10, 100]``
            (``[20]`` for keypoints). AP uses the last.
        verbose: let pycocotools print, and print the metrics.

    Returns:
        For ``"bbox"``/``"segm"``: ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs,
        ARm, ARl`` (the AR names follow ``max_dets``); for ``"keypoints"``: ``AP, AP50,
        AP75, APm, APl, AR, AR50, AR75, ARm, ARl``. Floats in [0, 1], -1 when undefined.
        With default ``max_dets`` they equal ``COCOeval.stats``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm", "keypoints"):
        raise ValueError(f"iou_type must be 'bbox', 'segm' or 'keypoints', got {iou_type!r}")
    gt = as_coco(coco_gt, verbose)
    if any(ann.get("id") == 0 for ann in gt.dataset.get("annotations", [])):
        # COCOeval stores the matched gt's id and tests it for truth: a match to id 0
        # would count as no match at all
        raise ValueError("pycocotools needs annotation ids >= 1; this ground truth has id 0")
    if isinstance(detections, str | os.PathLike):
        detections = json.loads(Path(detections).read_text())
    detections = list(detections)
    _check_detections(detections, gt, iou_type)

    category_ids = sorted(gt.getCatIds())
    if iou_type == "keypoints":
        keypoint_ids = sorted(c["id"] for c in _keypoint_categories(gt))
        category_ids = keypoint_ids or category_ids
        for ann in gt.dataset.get("annotations", []):
            if "num_keypoints" not in ann and "keypoints" in ann:  # COCOeval reads it
                ann["num_keypoints"] = int(np.count_nonzero(np.asarray(ann["keypoints"])[2::3]))
        detections = [d for d in detections if d["category_id"] in set(category_ids)]
    with _quiet(verbose):
        if detections:
            dt = gt.loadRes(_prepare_results(detections, iou_type))
        else:
            warnings.warn(
                f"coco_evaluate: no detections, so every {iou_type} metric is 0 "
                "(-1 where there is no ground truth to find)",
                UserWarning,
                stacklevel=2,
            )
            # an empty results set, built by hand since COCO.loadRes rejects [] ...
            dt = COCO()
            dt.dataset = {
                "images": list(gt.dataset["images"]),
                "categories": copy.deepcopy(gt.dataset["categories"]),
                "annotations": [],
            }
            dt.createIndex()
        # ... so that COCOeval runs as usual and gives exactly the numbers it would give

        coco_eval = COCOeval(gt, dt, iouType=iou_type)
        p = coco_eval.params
        p.catIds = category_ids
        ranges = _resolve_area_ranges(area_ranges, gt.dataset["images"])
        if iou_type == "keypoints":
            ranges = {k: v for k, v in ranges.items() if k in ("all", "medium", "large")}
            sigmas = _oks_sigmas(gt, kpt_oks_sigmas)
            if sigmas is not None:
                p.kpt_oks_sigmas = sigmas
        p.areaRng = [list(v) for v in ranges.values()]
        p.areaRngLbl = list(ranges)
        if max_dets is not None:
            p.maxDets = sorted(int(m) for m in max_dets)
        coco_eval.evaluate()
        coco_eval.accumulate()
    metrics = _summarize(coco_eval, iou_type, list(ranges))
    if verbose:
        _print_summary(metrics, iou_type, p.maxDets[-1])
    return metrics


# ---------------------------------------------------------------------------------------
# From model outputs to COCO result dicts


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def detections_to_coco(
    image_id: int,
    boxes_xyxy: Any,
    scores: Any,
    labels: Any,
    label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
    masks: Any = None,
    keypoints: Any = None,
    *,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """One image's model outputs as COCO result dicts, ready for :func:`coco_evaluate`.

    Args:
        image_id: the COCO image id.
        boxes_xyxy: ``(N, 4)`` boxes ``[x1, y1, x2, y2]`` in image pixels (tensor or
            array), written as COCO's ``[x, y, w, h]``.
        scores: ``(N,)``.
        labels: ``(N,)`` the model's contiguous labels ``1..C`` (0 is background).
        label_to_category_id: label -> COCO category id, a mapping or a sequence indexed
            by label; ``None`` when they are the same.
        masks: ``(N, H, W)`` or ``(N, 1, H, W)`` mask probabilities or binary masks at image
            size; binarised at ``>= mask_threshold`` and written as compressed RLE (with
            ``counts`` as ``str``, so the dicts can go to json).
        keypoints: ``(N, K, 3)`` ``(x, y, visibility)`` or ``(N, K, 2)`` (visibility 1 is
            added); written as a flat ``[x1, y1, v1, x2, ...]`` list. OKS ignores a
            result's visibilities.

    Returns:
        ``N`` dicts ``{"image_id", "category_id", "bbox", "score"}`` plus ``segmentation``
        and ``keypoints`` when given.
    """
    boxes = _to_numpy(boxes_xyxy).astype(np.float64).reshape(-1, 4)
    scores = _to_numpy(scores).astype(np.float64).reshape(-1)
    labels = _to_numpy(labels).astype(np.int64).reshape(-1)
    n = len(boxes)
    if len(scores) != n or len(labels) != n:
        raise ValueError(f"{n} boxes, {len(scores)} scores and {len(labels)} labels")
    xywh = _xyxy_to_xywh(boxes)

    rles = None
    if masks is not None:
        from pycocotools import mask as mask_utils

        masks = _to_numpy(masks)
        if masks.ndim == 4:
            masks = masks[:, 0]  # torchvision's Mask R-CNN gives (N, 1, H, W)
        if masks.shape[0] != n:
            raise ValueError(f"{n} boxes but {masks.shape[0]} masks")
        binary = masks if masks.dtype == bool else masks >= mask_threshold
        # pycocotools wants (H, W, N) uint8 in Fortran order
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")

    points = None
    if keypoints is not None:
        points = _to_numpy(keypoints).astype(np.float64)
        if points.ndim != 3 or points.shape[0] != n or points.shape[2] not in (2, 3):
            raise ValueError(f"keypoints must be ({n}, K, 3) or ({n}, K, 2), got {points.shape}")
        if points.shape[2] == 2:
            points = np.concatenate([points, np.ones_like(points[..., :1])], axis=2)

    results = []
    for i in range(n):
        label = int(labels[i])
        if label_to_category_id is None:
            category_id = label
        else:
            try:
                category_id = int(label_to_category_id[label])
            except (KeyError, IndexError):
                raise ValueError(f"label {label} has no COCO category id") from None
        result = {
            "image_id": int(image_id),
            "category_id": category_id,
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores[i]),
        }
        if rles is not None:
            result["segmentation"] = rles[i]
        if points is not None:
            result["keypoints"] = [float(v) for v in points[i].reshape(-1)]
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------
# Tools for studying the metrics without a model (chapter 00)


def subset_ground_truth(coco_gt: Any, image_ids: Sequence[int]) -> dict[str, Any]:
    """The COCO ground-truth dict restricted to ``image_ids`` (their images and
    annotations; all categories kept), for evaluating on part of a split."""
    data = _load_dataset(coco_gt)
    wanted = {int(i) for i in image_ids}
    missing = wanted - {img["id"] for img in data["images"]}
    if missing:
        raise ValueError(f"image ids {sorted(missing)[:5]} are not in the ground truth")
    return {
        **{k: v for k, v in data.items() if k not in ("images", "annotations")},
        "images": [img for img in data["images"] if img["id"] in wanted],
        "annotations": [a for a in data["annotations"] if a["image_id"] in wanted],
    }


def simulate_detections(
    dataset,
    image_ids: Sequence[int],
    box_noise: float = 0.1,
    miss_rate: float = 0.1,
    false_positives_per_image: float = 1.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """A pretend detector made from the ground truth, for studying what the metrics reward
    (chapter 00). Not a model: it reads the answers and spoils them in controlled ways.

    For each image of ``dataset`` (a :class:`~rcnn_steps.data.CocoDataset`) in
    ``image_ids``:

    - each (non-crowd) object is missed with probability ``miss_rate``;
    - each found object's box edges move by Gaussian noise with standard deviation
      ``box_noise`` times the box's width (for x) or height (for y);
    - its score is the IoU of the noisy box with the true one plus a little noise, so
      better boxes tend to rank higher, as a trained detector's would;
    - a Poisson(``false_positives_per_image``) number of background boxes are added, with
      sizes and classes drawn from the image's objects and lower scores (uniform 0-0.6).

    Returns one dict per image, in the model-output format used across the library:
    ``boxes`` (N, 4) xyxy float, ``scores`` (N,), ``labels`` (N,) int64.
    """
    if not 0.0 <= miss_rate <= 1.0:
        raise ValueError(f"miss_rate must be in [0, 1], got {miss_rate}")
    if box_noise < 0 or false_positives_per_image < 0:
        raise ValueError("box_noise and false_positives_per_image must not be negative")
    import torch

    from rcnn_steps.ops import box_iou, clip_boxes_to_image

    generator = torch.Generator().manual_seed(seed)
    index_of = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    outputs = []
    for image_id in image_ids:
        info = dataset.coco.imgs[image_id]
        size = (info["height"], info["width"])
        anns = [a for a in dataset.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        if image_id not in index_of:
            raise ValueError(f"image id {image_id} is not in the dataset")
        gt = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        gt[:, 2:] += gt[:, :2]  # xywh -> xyxy
        labels = torch.tensor(
            [dataset.category_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64
        )
        found = torch.rand(len(gt), generator=generator) >= miss_rate
        gt, labels = gt[found], labels[found]
        wh = (gt[:, 2:] - gt[:, :2]).repeat(1, 2)
        noisy = gt + torch.randn(gt.shape, generator=generator) * box_noise * wh
        noisy = clip_boxes_to_image(noisy, size)
        # keep every box at least one pixel wide and high, in order
        noisy[:, 2:] = torch.maximum(noisy[:, 2:], noisy[:, :2] + 1.0)
        quality = box_iou(noisy, gt).diagonal() if len(gt) else torch.zeros(0)
        scores = (quality + 0.05 * torch.randn(len(gt), generator=generator)).clamp(0.01, 1.0)

        num_fp = int(torch.poisson(torch.tensor(float(false_positives_per_image)), generator))
        if num_fp and len(anns):
            pick = torch.randint(len(anns), (num_fp,), generator=generator)
            all_wh = torch.tensor([anns[i]["bbox"][2:] for i in pick.tolist()])
            corner = torch.rand(num_fp, 2, generator=generator) * (
                torch.tensor([size[1], size[0]]) - all_wh
            ).clamp(min=1.0)
            fp_boxes = torch.cat([corner, corner + all_wh], dim=1)
            fp_labels = torch.tensor(
                [dataset.category_id_to_label[anns[i]["category_id"]] for i in pick.tolist()]
            )
            fp_scores = torch.rand(num_fp, generator=generator) * 0.6
            noisy = torch.cat([noisy, fp_boxes])
            labels = torch.cat([labels, fp_labels])
            scores = torch.cat([scores, fp_scores])
        outputs.append({"boxes": noisy, "scores": scores, "labels": labels})
    return outputs
