"""Step 3 of chapter 00: the real evaluator, pycocotools' ``COCOeval`` for boxes, masks
and keypoints, quiet and with checked inputs (:func:`coco_evaluate`), and a model's
outputs as the COCO result dicts it reads (:func:`detections_to_coco`)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rcnn_steps.evaluation.ap import _AREA_SUFFIX
from rcnn_steps.evaluation.matching import _resolve_area_ranges, _xyxy_to_xywh

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
