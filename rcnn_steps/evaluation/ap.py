"""Step 1 of chapter 00: the precision/recall curve and three ways to average it into AP
(PASCAL VOC 2007's 11-point, VOC 2010+'s area, COCO's 101-point), plus COCO's IoU and
recall thresholds and area ranges (scaled to small images by :func:`scaled_area_ranges`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
