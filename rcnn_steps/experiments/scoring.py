"""A trained detector scored, as at test time.

- :func:`detect`: the model in eval mode on some images of a set, one image at a time as
  deployed: COCO result dicts with boxes, masks and keypoints as the model gives them
  (:func:`trim_keypoints` cuts each result's keypoints to its class's own count), and the
  seconds per image; the detections of an image resized for the model are mapped back to
  its own pixels (:func:`_resized_back`);
- :func:`evaluate`: pycocotools' AP of those results: boxes, masks, and keypoints (per
  keypoint category, then their mean);
- :func:`keypoint_ap_of_noisy_truth`: how exact object keypoint similarity asks keypoints
  to be on a set's objects;
- :func:`keypoint_errors`: how far a model's keypoints lie from the labelled ones, in
  pixels and in cells of its heatmap, and the Gaussian noise with the same median error;
- :func:`thread_count`: torch's CPU thread count held fixed while images are timed.

:mod:`rcnn_steps.experiments.runner` re-exports them, and its
:func:`~rcnn_steps.experiments.runner.run_setting` reads them through that module (a test
replaces ``runner.detect`` there).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from rcnn_steps.evaluation import coco_evaluate, detections_to_coco, subset_ground_truth
from rcnn_steps.ops.boxes import box_iou

__all__ = [
    "detect",
    "evaluate",
    "keypoint_ap_of_noisy_truth",
    "keypoint_errors",
    "thread_count",
    "trim_keypoints",
]


def _resized_back(det: dict[str, torch.Tensor], scale: tuple[float, float], size) -> dict:
    """Detections of a resized image mapped back to the original ``size`` (h, w): boxes and
    keypoints divided by the scale, pasted masks resized (bilinear)."""
    sy, sx = scale
    out = dict(det)
    out["boxes"] = det["boxes"] / torch.tensor([sx, sy, sx, sy], device=det["boxes"].device)
    if "keypoints" in det:
        kps = det["keypoints"].clone()
        kps[..., 0] /= sx
        kps[..., 1] /= sy
        out["keypoints"] = kps
    if "masks" in det and len(det["masks"]):
        out["masks"] = torch.nn.functional.interpolate(
            det["masks"], size=tuple(size), mode="bilinear", align_corners=False
        )
    elif "masks" in det:
        out["masks"] = det["masks"].new_zeros((0, 1, *size))
    return out


@torch.no_grad()
def detect(
    model: torch.nn.Module,
    dataset,
    image_ids: Sequence[int],
    proposals: dict[int, torch.Tensor] | None = None,
    *,
    test_size: int | None = None,
    max_size: int | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Run ``model`` in eval mode on ``image_ids`` of ``dataset``, one image at a time as
    at test time: ``(COCO result dicts, mean seconds per image)``.

    Each result has ``bbox`` and ``score``, plus ``segmentation`` (an RLE of the mask
    binarised at 0.5) when the model returns ``masks`` and ``keypoints`` when it returns
    them (trimmed to each class's own keypoint count). The time covers the network only
    (preprocessing, backbone, RPN or RoI heads, NMS, masks and keypoints), not image
    loading or the RLE encoding. ``proposals`` (``{image_id: (P, 4)}``) are passed to a
    :class:`~rcnn_steps.detectors.fast_rcnn.FastRCNN`; the other models make their own. With
    ``test_size``, each image is resized to that shorter side (longer side at most
    ``max_size``) before the model sees it, and its detections are mapped back to the
    image's own pixels, where the ground truth is.
    """
    # local: start-up of ladder/ablations --help (rcnn_steps.data loads SciPy: 0.16 s)
    from rcnn_steps.data.transforms import ResizeShortestSide

    resize = ResizeShortestSide(test_size, max_size) if test_size else None

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counts = getattr(getattr(model, "config", None), "keypoint_counts", None)
    results: list[dict[str, Any]] = []
    seconds: list[float] = []
    for image_id in image_ids:
        image = dataset.load_image(image_id)
        size = image.shape[-2:]
        scale = None
        if resize is not None:
            image, resized = resize(image, {})
            scale = resized["scale"]
        image = image.to(device)
        args = ([image],) if proposals is None else ([image], [proposals[int(image_id)].to(device)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        det = model(*args)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
        if scale is not None:
            det = _resized_back(det, scale, size)
        found = detections_to_coco(
            image_id,
            det["boxes"],
            det["scores"],
            det["labels"],
            dataset.label_to_category_id,
            masks=det.get("masks"),
            keypoints=det.get("keypoints"),
        )
        trim_keypoints(found, det["labels"], counts)
        results += found
    model.train(was_training)
    return results, sum(seconds) / max(len(seconds), 1)


def trim_keypoints(
    results: Sequence[dict[str, Any]], labels: torch.Tensor, counts: Sequence[int] | None
) -> None:
    """Cut each COCO result's ``keypoints`` to its class's own count (``counts[label -
    1]``; a model's outputs are padded to the widest set), in place."""
    if not counts:
        return
    for result, label in zip(results, labels.tolist(), strict=True):
        if "keypoints" in result:
            k = counts[label - 1] if 0 < label <= len(counts) else 0
            result["keypoints"] = result["keypoints"][: 3 * k]


def evaluate(
    dataset, image_ids: Sequence[int], results: Sequence[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """COCO AP of ``results`` (from :func:`detect`) on ``image_ids`` of ``dataset``:
    ``{"bbox": metrics}``, plus ``"segm"`` when the results have masks and
    ``"keypoints"`` when they have keypoints and the data has a keypoint category
    (:func:`rcnn_steps.evaluation.coco_evaluate`)."""
    kinds = ["bbox"]
    if results and "segmentation" in results[0]:
        kinds.append("segm")
    out = {}
    for kind in kinds:
        gt = subset_ground_truth(dataset.coco, image_ids)
        out[kind] = {k: round(float(v), 4) for k, v in coco_evaluate(gt, results, kind).items()}
    keypoint_cats = [c for c in dataset.categories if c.get("keypoints")]
    if results and "keypoints" in results[0] and keypoint_cats:
        out["keypoints"] = _keypoint_ap(dataset, image_ids, results, keypoint_cats)
    return out


def _keypoint_ap(dataset, image_ids, results, categories) -> dict[str, float]:
    """Keypoint AP, category by category (each with its own keypoint count and OKS
    sigmas: COCOeval takes one set of sigmas per evaluation), then the mean over the
    categories, which is what COCOeval reports for several categories of one set."""
    gt = subset_ground_truth(dataset.coco, image_ids)
    per_category = []
    for cat in categories:
        k = len(cat["keypoints"])
        sigmas = cat.get("oks_sigmas") or (dataset.oks_sigmas if k == 17 else [0.05] * k)
        if len(sigmas) != k:
            sigmas = [0.05] * k
        one = dict(
            gt,
            categories=[cat],
            annotations=[a for a in gt["annotations"] if a["category_id"] == cat["id"]],
        )
        found = [r for r in results if r["category_id"] == cat["id"]]
        per_category.append(coco_evaluate(one, found, "keypoints", kpt_oks_sigmas=sigmas))
    merged = {}
    for name in per_category[0]:
        defined = [m[name] for m in per_category if m[name] > -1]
        merged[name] = round(float(sum(defined) / len(defined)), 4) if defined else -1.0
    return merged


def keypoint_ap_of_noisy_truth(
    dataset, image_ids: Sequence[int], noise_px: Sequence[float], seed: int = 0
) -> dict[float, float]:
    """How exact object keypoint similarity (OKS) asks keypoints to be on ``dataset``'s
    objects: ``{noise: keypoint AP}`` of the ground truth itself scored as detections
    (box, score 1), each labelled keypoint moved by Gaussian noise of ``noise`` pixels
    (standard deviation, in x and in y). Noise 0 scores 1.0.

    OKS (COCO's keypoint metric, used by Mask R-CNN's Table 4-6) is
    ``mean_i exp(-d_i^2 / (2 s^2 k_i^2))`` over labelled keypoints, with ``s^2`` the
    object's area and ``k_i = 2 sigma_i``: the same pixel error costs more on a small
    object."""
    import numpy as np

    rng = np.random.default_rng(seed)
    wanted = set(image_ids)
    truth = [
        a
        for a in dataset.coco.dataset["annotations"]
        if a["image_id"] in wanted and a.get("num_keypoints", 0) > 0
    ]
    if not truth:
        raise ValueError("keypoint_ap_of_noisy_truth: these images hold no labelled keypoints")
    categories = [c for c in dataset.categories if c.get("keypoints")]
    out = {}
    for noise in noise_px:
        results = []
        for a in truth:
            points = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
            points[:, :2] += rng.normal(0.0, float(noise), size=(len(points), 2))
            points[:, 2] = 1.0
            results.append(
                dict(
                    image_id=a["image_id"],
                    category_id=a["category_id"],
                    bbox=list(a["bbox"]),
                    score=1.0,
                    keypoints=points.ravel().tolist(),
                )
            )
        out[float(noise)] = _keypoint_ap(dataset, image_ids, results, categories)["AP"]
    return out


#: the median of the distance sqrt(dx^2 + dy^2) when dx and dy are Gaussian with standard
#: deviation 1 (a Rayleigh distribution's median, sqrt(2 ln 2)): it turns a median error
#: into the noise of :func:`keypoint_ap_of_noisy_truth` that would give the same median
RAYLEIGH_MEDIAN = math.sqrt(2.0 * math.log(2.0))


def keypoint_errors(
    dataset,
    image_ids: Sequence[int],
    results: Sequence[dict[str, Any]],
    heatmap_size: int,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """How far the keypoints of ``results`` (COCO result dicts from :func:`detect`) lie from
    the labelled ones on ``image_ids`` of ``dataset``.

    Each labelled object with keypoints is matched to a detection of its category, the
    detections taken from the highest score down, each to the unmatched object its box
    overlaps most (box IoU at least ``iou_threshold``, as COCO matches). For every labelled
    keypoint of a matched object, the error is the distance from the detected keypoint, in
    pixels, and in cells of the heatmap: the keypoint head predicts on a
    ``heatmap_size x heatmap_size`` grid stretched over the detection's box (Mask R-CNN,
    section 5: one-hot masks of m x m, m = 56), so one cell is ``w / heatmap_size`` by
    ``h / heatmap_size`` pixels and ``dx, dy`` are divided by those before the distance.

    Returns ``{"objects", "matched", "keypoints", "median_px", "p90_px", "median_cells",
    "noise_px"}``: the labelled objects, those matched, the keypoints measured, the median
    and 90th percentile error in pixels, the median in cells, and the Gaussian noise (std
    per axis, :func:`keypoint_ap_of_noisy_truth`'s) whose median error is the same
    (``median_px / sqrt(2 ln 2)``). The errors are NaN when nothing matched."""
    import numpy as np

    wanted = set(int(i) for i in image_ids)
    truth: dict[tuple[int, int], list[dict]] = {}
    for a in dataset.coco.dataset["annotations"]:
        if a["image_id"] in wanted and a.get("num_keypoints", 0) > 0:
            truth.setdefault((a["image_id"], a["category_id"]), []).append(a)
    if not truth:
        raise ValueError("keypoint_errors: these images hold no labelled keypoints")
    found: dict[tuple[int, int], list[dict]] = {}
    for r in results:
        if (r["image_id"], r["category_id"]) in truth and r.get("keypoints"):
            found.setdefault((r["image_id"], r["category_id"]), []).append(r)

    def xyxy(b):
        return [b[0], b[1], b[0] + b[2], b[1] + b[3]]

    px, cells, matched = [], [], 0
    for key, objects in truth.items():
        dets = sorted(found.get(key, []), key=lambda r: -r["score"])
        if not dets:
            continue
        ious = box_iou(
            torch.tensor([xyxy(r["bbox"]) for r in dets], dtype=torch.float64),
            torch.tensor([xyxy(a["bbox"]) for a in objects], dtype=torch.float64),
        ).numpy()
        free = np.ones(len(objects), dtype=bool)
        for d, det in enumerate(dets):
            overlap = np.where(free, ious[d], -1.0)
            j = int(np.argmax(overlap))
            if overlap[j] < iou_threshold:
                continue
            free[j] = False
            matched += 1
            labelled = np.asarray(objects[j]["keypoints"], dtype=np.float64).reshape(-1, 3)
            guessed = np.asarray(det["keypoints"], dtype=np.float64).reshape(-1, 3)
            k = min(len(labelled), len(guessed))
            seen = labelled[:k, 2] > 0
            delta = guessed[:k, :2][seen] - labelled[:k, :2][seen]
            cell = np.array([det["bbox"][2], det["bbox"][3]], dtype=np.float64) / heatmap_size
            px += np.hypot(delta[:, 0], delta[:, 1]).tolist()
            in_cells = delta / np.maximum(cell, 1e-9)
            cells += np.hypot(in_cells[:, 0], in_cells[:, 1]).tolist()
    objects_count = sum(len(v) for v in truth.values())
    nan = float("nan")
    median_px = float(np.median(px)) if px else nan
    return {
        "objects": objects_count,
        "matched": matched,
        "keypoints": len(px),
        "median_px": round(median_px, 3),
        "p90_px": round(float(np.percentile(px, 90)), 3) if px else nan,
        "median_cells": round(float(np.median(cells)), 3) if cells else nan,
        "noise_px": round(median_px / RAYLEIGH_MEDIAN, 3),
    }


def thread_count(threads: int | None):
    """A context manager: torch's CPU thread count set to ``threads`` inside (None: left
    as it is), restored after. Test-time timings are taken with a fixed count so that
    rows measured by different commands compare."""
    import contextlib

    @contextlib.contextmanager
    def scope():
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return scope()
