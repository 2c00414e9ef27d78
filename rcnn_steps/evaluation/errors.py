"""What a detector gets wrong, kind by kind (chapter 08): every object and every detection
of an image sorted into *hits* and five kinds of failure, and a summary over a data set
(counts per kind, misses by object size, which class is taken for which).

AP says how good a detector is; it does not say what its errors are. Following the error
analysis of Hoiem et al. ("Diagnosing error in object detectors", ECCV 2012) and TIDE
(Bolya et al., ECCV 2020), one image is judged at one operating point (detections with a
score of at least ``score_threshold``) in three steps:

1. **Hits.** Match the detections of each class to the objects of that class greedily by
   decreasing score at IoU ``>= iou_threshold`` (0.5), exactly as COCOeval does
   (:func:`~rcnn_steps.evaluation.match_detections`, crowd regions included): a matched
   detection and its object are a ``hit``. A detection absorbed by a crowd region is
   ``in_crowd``, neither right nor wrong (COCO ignores it).
2. **Each other detection** (a false positive) gets the first kind that fits, with ``own``
   its best IoU with an object of its own class and ``other`` with an object of another
   class (crowds are not objects):

   - ``duplicate``: ``own >= iou_threshold``: the object was found, but by a detection
     with a higher score (greedy matching guarantees it was taken);
   - ``wrong_class``: ``other >= iou_threshold``: a good box with the wrong label;
   - ``poor_box``: ``background_iou <= own < iou_threshold``: the right class, the box
     too far off;
   - ``wrong_class_poor_box``: ``background_iou <= other``: both wrong (TIDE's "both");
   - ``background``: it overlaps no object at ``background_iou`` (0.1) or more.
3. **Each object not hit** (a miss) gets the first kind that fits:

   - ``wrong_class``: a detection of another class overlaps it at ``>= iou_threshold``;
   - ``poor_box``: a detection of its own class overlaps it at ``>= background_iou`` but
     did not match it (its box too far off, or it matched a neighbour instead);
   - ``missed``: neither: the detector put nothing on it.

Every object is one of ``hit``, ``wrong_class``, ``poor_box``, ``missed`` (so
``hit + the rest = objects``); every detection is one of :data:`DETECTION_KINDS` (so
``hit + the false positives + in_crowd = detections``). With ``score_threshold=0`` the hits
are COCO's true positives at that IoU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rcnn_steps.evaluation.ap import scaled_area_ranges
from rcnn_steps.evaluation.matching import (
    _iou_xywh,
    _load_dataset,
    _typical_image_size,
    _xyxy_to_xywh,
    match_detections,
)

#: What an object can be: found, or one of three ways of not being found.
OBJECT_KINDS = ("hit", "wrong_class", "poor_box", "missed")
#: What a detection can be: right, one of five errors, or inside a crowd (ignored).
DETECTION_KINDS = (
    "hit",
    "duplicate",
    "wrong_class",
    "poor_box",
    "wrong_class_poor_box",
    "background",
    "in_crowd",
)
#: The size classes of :func:`size_classes`, smallest first.
SIZE_CLASSES = ("small", "medium", "large")


@dataclass(frozen=True)
class ImageErrors:
    """The verdict on one image (:func:`classify_errors`).

    Detections are those with ``score >= score_threshold``, sorted by decreasing score;
    objects are the image's non-crowd ground truths, in input order.

    Attributes:
        det_boxes: ``(D, 4)`` xyxy. det_labels: ``(D,)`` int. det_scores: ``(D,)``.
        det_index: ``(D,)`` each detection's index in the caller's input.
        det_kinds: ``(D,)`` str, one of :data:`DETECTION_KINDS`.
        det_object: ``(D,)`` the object each detection is about (the one it hit, took
            twice, mislabelled or boxed poorly), or -1 (``background``, ``in_crowd``).
        det_iou: ``(D,)`` its IoU with that object (0 for -1).
        det_in_crowd: ``(D,)`` bool, the detection lies in a crowd region of any class
            (at least half its box inside the region's box, COCO's crowd overlap).
        det_inside: ``(D,)`` the object whose box holds at least half of the detection's
            box (the most of it), or -1: for a ``background`` detection, a part of an
            object taken for an object.
        gt_boxes: ``(G, 4)`` xyxy. gt_labels: ``(G,)`` int. gt_areas: ``(G,)`` pixels.
        gt_kinds: ``(G,)`` str, one of :data:`OBJECT_KINDS`.
        gt_detection: ``(G,)`` the detection that hit, mislabelled or poorly boxed the
            object, or -1 (``missed``). gt_iou: ``(G,)`` their IoU (0 for -1).
    """

    det_boxes: np.ndarray
    det_labels: np.ndarray
    det_scores: np.ndarray
    det_index: np.ndarray
    det_kinds: np.ndarray
    det_object: np.ndarray
    det_iou: np.ndarray
    det_in_crowd: np.ndarray
    det_inside: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_areas: np.ndarray
    gt_kinds: np.ndarray
    gt_detection: np.ndarray
    gt_iou: np.ndarray


def _best(ious: np.ndarray, allowed: np.ndarray) -> tuple[int, float]:
    """Index and value of the largest of ``ious`` where ``allowed``; (-1, 0.0) if none."""
    if not allowed.any():
        return -1, 0.0
    masked = np.where(allowed, ious, -1.0)
    index = int(np.argmax(masked))
    return index, float(masked[index])


def classify_errors(
    det_boxes: Any,
    det_labels: Any,
    det_scores: Any,
    gt_boxes: Any,
    gt_labels: Any,
    gt_areas: Any | None = None,
    *,
    gt_iscrowd: Any | None = None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    background_iou: float = 0.1,
) -> ImageErrors:
    """Sort every object and every detection of one image into a kind (chapter 08; the
    kinds and the order they are tried in are in this module's docstring).

    Args:
        det_boxes: ``(D, 4)`` xyxy detection boxes. det_labels: ``(D,)`` their classes.
        det_scores: ``(D,)`` their scores.
        gt_boxes: ``(G, 4)`` xyxy ground-truth boxes. gt_labels: ``(G,)`` their classes.
        gt_areas: ``(G,)`` their areas in pixels (the mask area, as COCO's ``area``);
            default: the boxes' areas.
        gt_iscrowd: ``(G,)`` bool, crowd regions: not objects, they only absorb
            detections of their class. Default: none.
        score_threshold: detections below it are dropped first.
        iou_threshold: the IoU a hit needs (and a duplicate or a wrong class).
        background_iou: below it a detection overlaps nothing.

    Arrays may be numpy arrays, lists or CPU tensors.
    """
    if not 0.0 < background_iou <= iou_threshold <= 1.0:
        raise ValueError(
            f"need 0 < background_iou <= iou_threshold <= 1, got {background_iou=} "
            f"and {iou_threshold=}"
        )
    boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(det_labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(f"{len(boxes)} boxes, {len(labels)} labels and {len(scores)} scores")
    all_gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    all_gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    if len(all_gt_boxes) != len(all_gt_labels):
        raise ValueError(f"{len(all_gt_boxes)} ground-truth boxes but {len(all_gt_labels)} labels")
    if gt_areas is None:
        sides = all_gt_boxes[:, 2:] - all_gt_boxes[:, :2]
        all_areas = sides[:, 0] * sides[:, 1]
    else:
        all_areas = np.asarray(gt_areas, dtype=np.float64).reshape(-1)
    crowd = np.zeros(len(all_gt_boxes), bool)
    if gt_iscrowd is not None:
        crowd = np.asarray(gt_iscrowd, dtype=bool).reshape(-1)
    if not len(all_areas) == len(crowd) == len(all_gt_boxes):
        raise ValueError("gt_areas and gt_iscrowd need one entry per ground-truth box")

    # the operating point: detections at or above the threshold, best first (stable)
    kept = np.flatnonzero(scores >= score_threshold)
    det_index = kept[np.argsort(-scores[kept], kind="mergesort")]
    boxes, labels, scores = boxes[det_index], labels[det_index], scores[det_index]
    num_dets = len(boxes)

    # step 1: COCO's greedy matching, class by class (crowds of the class take part)
    det_kinds = np.full(num_dets, "", dtype=object)
    det_object = np.full(num_dets, -1, dtype=np.int64)
    object_of = np.flatnonzero(~crowd)  # object number -> row of the input ground truth
    row_to_object = np.full(len(crowd), -1, dtype=np.int64)
    row_to_object[object_of] = np.arange(len(object_of))
    for label in np.unique(labels):
        mine = np.flatnonzero(labels == label)
        rows = np.flatnonzero(all_gt_labels == label)
        matches = match_detections(
            boxes[mine], scores[mine], all_gt_boxes[rows], crowd[rows], iou_threshold
        )
        for d, g, ignored in zip(mine, matches.gt_index, matches.ignored, strict=True):
            if ignored:
                det_kinds[d] = "in_crowd"
            elif g >= 0:
                det_kinds[d] = "hit"
                det_object[d] = row_to_object[rows[g]]

    gt_boxes_ = all_gt_boxes[object_of]
    gt_labels_ = all_gt_labels[object_of]
    num_objects = len(gt_boxes_)
    ious = _iou_xywh(_xyxy_to_xywh(boxes), _xyxy_to_xywh(gt_boxes_), np.zeros(num_objects, bool))
    same = labels[:, None] == gt_labels_[None, :]  # (D, G)
    det_iou = np.zeros(num_dets)
    gt_kinds = np.full(num_objects, "", dtype=object)
    gt_detection = np.full(num_objects, -1, dtype=np.int64)
    gt_iou = np.zeros(num_objects)
    for d in np.flatnonzero(det_kinds == "hit"):
        g = det_object[d]
        gt_kinds[g], gt_detection[g] = "hit", d
        det_iou[d] = gt_iou[g] = ious[d, g]

    # step 2: the false positives
    for d in np.flatnonzero(det_kinds == ""):
        own, own_iou = _best(ious[d], same[d])
        other, other_iou = _best(ious[d], ~same[d])
        if own_iou >= iou_threshold:
            det_kinds[d], det_object[d], det_iou[d] = "duplicate", own, own_iou
        elif other_iou >= iou_threshold:
            det_kinds[d], det_object[d], det_iou[d] = "wrong_class", other, other_iou
        elif own_iou >= background_iou:
            det_kinds[d], det_object[d], det_iou[d] = "poor_box", own, own_iou
        elif other_iou >= background_iou:
            det_kinds[d], det_object[d], det_iou[d] = "wrong_class_poor_box", other, other_iou
        else:
            det_kinds[d] = "background"

    # where the detections lie: in a crowd region, inside an object's box
    crowd_boxes = _xyxy_to_xywh(all_gt_boxes[crowd])
    in_crowd = _iou_xywh(_xyxy_to_xywh(boxes), crowd_boxes, np.ones(len(crowd_boxes), bool))
    det_in_crowd = (in_crowd >= 0.5).any(axis=1)
    inside = _iou_xywh(_xyxy_to_xywh(boxes), _xyxy_to_xywh(gt_boxes_), np.ones(num_objects, bool))
    det_inside = np.full(num_dets, -1, dtype=np.int64)
    if num_objects:
        holds = inside.max(axis=1) >= 0.5
        det_inside[holds] = inside.argmax(axis=1)[holds]

    # step 3: the objects not hit
    for g in np.flatnonzero(gt_kinds == ""):
        other, other_iou = _best(ious[:, g], ~same[:, g])
        own, own_iou = _best(ious[:, g], same[:, g])
        if other_iou >= iou_threshold:
            gt_kinds[g], gt_detection[g], gt_iou[g] = "wrong_class", other, other_iou
        elif own_iou >= background_iou:
            gt_kinds[g], gt_detection[g], gt_iou[g] = "poor_box", own, own_iou
        else:
            gt_kinds[g] = "missed"

    return ImageErrors(
        det_boxes=boxes,
        det_labels=labels,
        det_scores=scores,
        det_index=det_index,
        det_kinds=det_kinds.astype(str),
        det_object=det_object,
        det_iou=det_iou,
        det_in_crowd=det_in_crowd,
        det_inside=det_inside,
        gt_boxes=gt_boxes_,
        gt_labels=gt_labels_,
        gt_areas=all_areas[object_of],
        gt_kinds=gt_kinds.astype(str),
        gt_detection=gt_detection,
        gt_iou=gt_iou,
    )


@dataclass(frozen=True)
class Failure:
    """One error of :meth:`ErrorSummary.failures`: an object not hit (``side="object"``)
    or a detection that is not a hit (``side="detection"``).

    Attributes:
        image_id: the image. side: ``"object"`` or ``"detection"``.
        kind: one of :data:`OBJECT_KINDS` or :data:`DETECTION_KINDS` (never ``hit``).
        index: the object's or detection's index in that image's :class:`ImageErrors`.
        score: the detection's score (for an object, that of the detection it relates to;
            0 if none). size: the object's size class, ``""`` without an object.
        area: the object's area in pixels (0 without an object).
    """

    image_id: int
    side: str
    kind: str
    index: int
    score: float
    size: str
    area: float


@dataclass(frozen=True)
class ErrorSummary:
    """The errors of a detector over a data set (:func:`error_summary`).

    Attributes:
        class_names: ``{category_id: name}``.
        per_image: ``{image_id: ImageErrors}``, labels being category ids.
        object_counts: objects per kind of :data:`OBJECT_KINDS`.
        detection_counts: detections per kind of :data:`DETECTION_KINDS`.
        objects_by_size: ``{size: {kind: count}}`` over :data:`SIZE_CLASSES` and
            :data:`OBJECT_KINDS`.
        background_where: the ``background`` detections by where they lie:
            ``{"crowd_region": n, "inside_object": n, "elsewhere": n}`` (a crowd first).
        confusion: ``(K, K)`` int, rows the object's class and columns the detected
            class, in the order of ``class_names``: the diagonal counts hits, an
            off-diagonal cell the ``wrong_class`` objects (with the class of the
            detection that mislabelled them).
        image_size: the image side the size classes were computed for.
    """

    class_names: dict[int, str]
    per_image: dict[int, ImageErrors]
    object_counts: dict[str, int]
    detection_counts: dict[str, int]
    objects_by_size: dict[str, dict[str, int]]
    background_where: dict[str, int]
    confusion: np.ndarray
    image_size: float

    @property
    def false_positives(self) -> int:
        """Detections that are neither hits nor inside a crowd."""
        return sum(n for k, n in self.detection_counts.items() if k not in ("hit", "in_crowd"))

    @property
    def misses(self) -> int:
        """Objects not hit (``wrong_class + poor_box + missed``)."""
        return sum(n for k, n in self.object_counts.items() if k != "hit")

    def objects_and_misses_per_image(self) -> np.ndarray:
        """``(N, 2)`` int, for each image (by id): its objects and its objects not hit."""
        return np.array(
            [[len(e.gt_kinds), int(np.sum(e.gt_kinds != "hit"))] for e in self.per_image.values()],
            dtype=np.int64,
        ).reshape(-1, 2)

    def top_confusions(self, n: int = 3) -> list[tuple[str, str, int]]:
        """The ``n`` largest off-diagonal cells of ``confusion`` as ``(object class,
        detected class, count)``, largest first (cells of 0 left out)."""
        names = list(self.class_names.values())
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:n]
        cells = [np.unravel_index(i, off.shape) for i in order]
        return [(names[r], names[c], int(off[r, c])) for r, c in cells if off[r, c] > 0]

    def failures(self, kind: str | None = None, side: str | None = None) -> list[Failure]:
        """Every failure (of ``kind`` and ``side`` when given), the most confident first:
        by decreasing score, then by decreasing object area (the biggest misses first),
        then by image id."""
        if kind is not None and kind not in set(OBJECT_KINDS + DETECTION_KINDS) - {"hit"}:
            raise ValueError(f"kind must be a failure kind, got {kind!r}")
        if side not in (None, "object", "detection"):
            raise ValueError(f"side must be None, 'object' or 'detection', got {side!r}")
        found = []
        for image_id, e in self.per_image.items():
            sizes = size_classes(e.gt_areas, self.image_size)
            if side in (None, "object"):
                for g in np.flatnonzero(e.gt_kinds != "hit"):
                    d = e.gt_detection[g]
                    score = float(e.det_scores[d]) if d >= 0 else 0.0
                    found.append(
                        Failure(
                            image_id,
                            "object",
                            str(e.gt_kinds[g]),
                            int(g),
                            score,
                            str(sizes[g]),
                            float(e.gt_areas[g]),
                        )
                    )
            if side in (None, "detection"):
                for d in np.flatnonzero(~np.isin(e.det_kinds, ["hit", "in_crowd"])):
                    g = e.det_object[d]
                    size, area = (str(sizes[g]), float(e.gt_areas[g])) if g >= 0 else ("", 0.0)
                    found.append(
                        Failure(
                            image_id,
                            "detection",
                            str(e.det_kinds[d]),
                            int(d),
                            float(e.det_scores[d]),
                            size,
                            area,
                        )
                    )
        found = [f for f in found if kind is None or f.kind == kind]
        return sorted(found, key=lambda f: (-f.score, -f.area, f.image_id, f.index))


def size_classes(areas: Any, image_size: float) -> np.ndarray:
    """``"small"``, ``"medium"`` or ``"large"`` for each of ``(N,)`` object areas (pixels),
    with COCO's bounds scaled to ``image_size`` (:func:`scaled_area_ranges`): the same
    classes as :func:`rcnn_steps.data.size_class_of` (an area on a bound goes up a class)."""
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    ranges = scaled_area_ranges(image_size)
    small, medium = ranges["small"][1], ranges["medium"][1]
    return np.where(areas < small, "small", np.where(areas < medium, "medium", "large"))


def error_summary(
    coco_gt: Any,
    results: Sequence[Mapping[str, Any]],
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    background_iou: float = 0.1,
    image_size: float | None = None,
) -> ErrorSummary:
    """The errors of a detector over every image of ``coco_gt`` (chapter 08): each image
    judged by :func:`classify_errors`, then counted.

    Args:
        coco_gt: the ground truth: a COCO dict, a json path or a ``pycocotools`` COCO.
        results: COCO result dicts (``image_id``, ``category_id``, ``bbox`` as
            ``[x, y, w, h]``, ``score``), as :func:`rcnn_steps.experiments.runner.detect` returns.
        score_threshold, iou_threshold, background_iou: as in :func:`classify_errors`.
        image_size: the side the size classes are scaled to
            (:func:`size_classes`); default: the images' median long side.
    """
    dataset = _load_dataset(coco_gt)
    images = sorted(dataset["images"], key=lambda img: img["id"])
    size = image_size if image_size is not None else _typical_image_size(images)
    if size is None:
        raise ValueError("the images carry no width/height: pass image_size")
    class_names = {c["id"]: c["name"] for c in sorted(dataset["categories"], key=lambda c: c["id"])}
    column = {cat: i for i, cat in enumerate(class_names)}
    known = {img["id"] for img in images}
    gts: dict[int, list] = {i: [] for i in known}
    for ann in dataset["annotations"]:
        if ann["image_id"] in known:
            gts[ann["image_id"]].append(ann)
    dets: dict[int, list] = {i: [] for i in known}
    for det in results:
        if det["image_id"] not in known:
            raise ValueError(f"detection for image {det['image_id']}, not in the ground truth")
        dets[det["image_id"]].append(det)

    def xyxy(items: list) -> np.ndarray:
        xywh = np.array([a["bbox"] for a in items], dtype=np.float64).reshape(-1, 4)
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)

    per_image = {}
    object_counts = dict.fromkeys(OBJECT_KINDS, 0)
    detection_counts = dict.fromkeys(DETECTION_KINDS, 0)
    by_size = {s: dict.fromkeys(OBJECT_KINDS, 0) for s in SIZE_CLASSES}
    where = dict.fromkeys(("crowd_region", "inside_object", "elsewhere"), 0)
    confusion = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    for img in images:
        anns, found = gts[img["id"]], dets[img["id"]]
        e = classify_errors(
            xyxy(found),
            [d["category_id"] for d in found],
            [d["score"] for d in found],
            xyxy(anns),
            [a["category_id"] for a in anns],
            [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns],
            gt_iscrowd=[bool(a.get("iscrowd", 0)) for a in anns],
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            background_iou=background_iou,
        )
        per_image[img["id"]] = e
        for kind in e.gt_kinds:
            object_counts[kind] += 1
        for kind in e.det_kinds:
            detection_counts[kind] += 1
        for kind, s in zip(e.gt_kinds, size_classes(e.gt_areas, size), strict=True):
            by_size[s][kind] += 1
        for d in np.flatnonzero(e.det_kinds == "background"):
            if e.det_in_crowd[d]:
                where["crowd_region"] += 1
            else:
                where["inside_object" if e.det_inside[d] >= 0 else "elsewhere"] += 1
        for g, kind in enumerate(e.gt_kinds):
            if kind in ("hit", "wrong_class"):
                detected = e.det_labels[e.gt_detection[g]]
                confusion[column[e.gt_labels[g]], column[detected]] += 1
    return ErrorSummary(
        class_names=class_names,
        per_image=per_image,
        object_counts=object_counts,
        detection_counts=detection_counts,
        objects_by_size=by_size,
        background_where=where,
        confusion=confusion,
        image_size=float(size),
    )
