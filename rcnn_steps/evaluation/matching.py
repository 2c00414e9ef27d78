"""Step 2 of chapter 00: matching detections to ground truth COCO's way (greedy, by
score, crowd regions and ignored objects) and COCO's box AP computed from scratch with it,
equal to pycocotools' (:func:`coco_box_ap_from_scratch`)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rcnn_steps.evaluation.ap import (
    _AREA_SUFFIX,
    COCO_AREA_RANGES,
    COCO_IOU_THRESHOLDS,
    average_precision_coco101,
    precision_recall,
    scaled_area_ranges,
)

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
