"""The error kinds of chapter 08 (rcnn_steps.evaluation.errors): hand-made boxes for every
kind, the hits equal to COCOeval's true positives, and the summary over a data set."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rcnn_steps.data import size_class_of
from rcnn_steps.evaluation import (
    DETECTION_KINDS,
    OBJECT_KINDS,
    classify_errors,
    error_summary,
    scaled_area_ranges,
    size_classes,
)

# one 128 px image with every kind (classes 1, 2, 3, 4; boxes xyxy)
OBJECTS = {
    "A": (1, [0, 0, 10, 10]),  # found twice: a hit and a duplicate
    "B": (2, [20, 20, 30, 30]),  # found as class 3: wrong class
    "C": (1, [40, 40, 50, 50]),  # found with a box too tall: poor box
    "D": (2, [60, 60, 70, 70]),  # nothing on it at 0.5 (a weak det is dropped): missed
    "crowd": (1, [100, 0, 128, 28]),
}
DETECTIONS = [  # (class, box, score, kind of the detection)
    (1, [0, 0, 10, 10], 0.9, "hit"),
    (1, [0, 0, 10, 9], 0.8, "duplicate"),  # IoU 0.9 with A, taken by the 0.9
    (3, [20, 20, 30, 30], 0.7, "wrong_class"),
    (1, [40, 40, 50, 65], 0.65, "poor_box"),  # IoU 100 / 250 = 0.4 with C
    (4, [60, 60, 70, 85], 0.62, "wrong_class_poor_box"),  # IoU 0.4 with D, class 4
    (1, [88, 88, 98, 98], 0.6, "background"),
    (1, [105, 5, 115, 15], 0.55, "in_crowd"),  # inside the crowd of its class
    (2, [60, 60, 70, 70], 0.3, None),  # below the score threshold: dropped
]


def _hand_made():
    names = [n for n in OBJECTS if n != "crowd"] + ["crowd"]
    return classify_errors(
        [d[1] for d in DETECTIONS],
        [d[0] for d in DETECTIONS],
        [d[2] for d in DETECTIONS],
        [OBJECTS[n][1] for n in names],
        [OBJECTS[n][0] for n in names],
        gt_iscrowd=[n == "crowd" for n in names],
        score_threshold=0.5,
    )


def test_every_kind_on_hand_made_boxes():
    e = _hand_made()
    kept = [d for d in DETECTIONS if d[3] is not None]
    assert list(e.det_kinds) == [d[3] for d in kept]
    assert list(e.det_index) == list(range(len(kept)))  # already by decreasing score
    assert list(e.gt_kinds) == ["hit", "wrong_class", "poor_box", "missed"]  # crowd left out
    assert len(e.gt_boxes) == 4
    # what each detection is about, and the overlaps
    assert list(e.det_object) == [0, 0, 1, 2, 3, -1, -1]
    np.testing.assert_allclose(e.det_iou, [1.0, 0.9, 1.0, 0.4, 0.4, 0.0, 0.0])
    # what each object's verdict rests on: the hit, the mislabelling and the poor box
    assert list(e.gt_detection) == [0, 2, 3, -1]
    np.testing.assert_allclose(e.gt_iou, [1.0, 1.0, 0.4, 0.0])
    # where they lie: only the last in a crowd; the first three inside an object's box
    assert list(e.det_in_crowd) == [False] * 6 + [True]
    assert list(e.det_inside) == [0, 0, 1, -1, -1, -1, -1]
    assert set(e.det_kinds) <= set(DETECTION_KINDS) and set(e.gt_kinds) <= set(OBJECT_KINDS)


def test_the_score_threshold_decides_what_counts():
    # with every detection kept, the 0.3 box of class 2 on D hits it
    names = [n for n in OBJECTS if n != "crowd"]
    e = classify_errors(
        [d[1] for d in DETECTIONS],
        [d[0] for d in DETECTIONS],
        [d[2] for d in DETECTIONS],
        [OBJECTS[n][1] for n in names],
        [OBJECTS[n][0] for n in names],
        score_threshold=0.0,
    )
    assert list(e.gt_kinds) == ["hit", "wrong_class", "poor_box", "hit"]
    # without the crowd its detection overlaps nothing
    assert e.det_kinds[list(e.det_scores).index(0.55)] == "background"


def test_greedy_by_score_the_first_detection_takes_the_object():
    # the better box scores lower: it comes second and is the duplicate, as in COCO
    e = classify_errors([[0, 0, 10, 8], [0, 0, 10, 10]], [1, 1], [0.9, 0.8], [[0, 0, 10, 10]], [1])
    assert list(e.det_kinds) == ["hit", "duplicate"]
    assert e.det_iou[0] == pytest.approx(0.8)
    # a wrong class near a hit is still a wrong class: it is another class's detection
    e = classify_errors(
        [[0, 0, 10, 10], [0, 0, 10, 10]], [1, 2], [0.9, 0.95], [[0, 0, 10, 10]], [1]
    )
    assert list(e.det_kinds) == ["wrong_class", "hit"] and list(e.gt_kinds) == ["hit"]


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="boxes, 1 labels and 2 scores"):
        classify_errors([[0, 0, 1, 1], [0, 0, 2, 2]], [1], [0.5, 0.6], [], [])
    with pytest.raises(ValueError, match="background_iou <= iou_threshold"):
        classify_errors([], [], [], [], [], iou_threshold=0.5, background_iou=0.6)
    with pytest.raises(ValueError, match="one entry per ground-truth box"):
        classify_errors([], [], [], [[0, 0, 1, 1]], [1], gt_areas=[1.0, 2.0])


def test_nothing_at_all():
    e = classify_errors([], [], [], [], [])
    assert e.det_kinds.shape == (0,) and e.gt_kinds.shape == (0,)


def _random_case(seed: int):
    """A few 64 px images: objects of three classes, crowds, noisy and stray detections."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, 11):
        images.append({"id": image_id, "width": 64, "height": 64, "file_name": f"{image_id}.png"})
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 44, 2)
            w, h = rng.uniform(4, 20, 2)
            cat = int(rng.integers(1, 4))
            crowd = int(rng.uniform() < 0.1)
            ann_id = len(annotations) + 1
            ann = {"id": ann_id, "image_id": image_id, "category_id": cat, "iscrowd": crowd}
            annotations.append({**ann, "bbox": [x, y, w, h], "area": w * h * 0.8})
            for _ in range(rng.integers(0, 3)):  # detections near it, some of another class
                box = [x, y, w, h] + rng.normal(0, 0.1, 4) * [w, h, w, h]
                box[2:] = np.maximum(box[2:], 1)
                label = cat if rng.uniform() < 0.8 else int(rng.integers(1, 4))
                results.append({"image_id": image_id, "category_id": label,
                                "bbox": box.tolist(), "score": float(rng.uniform())})  # fmt: skip
        for _ in range(rng.integers(0, 3)):  # stray detections
            x, y, w, h = *rng.uniform(0, 44, 2), *rng.uniform(3, 20, 2)
            results.append({"image_id": image_id, "category_id": int(rng.integers(1, 4)),
                            "bbox": [x, y, w, h], "score": float(rng.uniform())})  # fmt: skip
    categories = [{"id": c, "name": n} for c, n in ((1, "square"), (2, "disc"), (3, "bar"))]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _cocoeval_true_positives(gt: dict, results: list, iou: float) -> int:
    """COCOeval's true positives at one IoU, all areas, up to 100 detections per class."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(results))), "bbox")
        ev.params.iouThrs = np.array([iou])
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
        ev.params.maxDets = [100]
        ev.evaluate()
    found = [e for e in ev.evalImgs if e is not None]
    return sum(int(np.sum((e["dtMatches"][0] > 0) & ~e["dtIgnore"][0])) for e in found)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou", [0.5, 0.75])
def test_hits_are_cocoevals_true_positives(seed, iou):
    gt, results = _random_case(seed)
    summary = error_summary(gt, results, score_threshold=0.0, iou_threshold=iou)
    tps = _cocoeval_true_positives(gt, results, iou)
    assert tps >= 3  # the case is not trivial
    if iou == 0.5:  # and crowds absorb detections (these seeds all have one)
        assert summary.detection_counts["in_crowd"] > 0
    assert summary.object_counts["hit"] == summary.detection_counts["hit"] == tps
    # every object and every detection has exactly one kind
    objects = sum(1 for a in gt["annotations"] if not a["iscrowd"])
    assert sum(summary.object_counts.values()) == objects
    assert sum(summary.detection_counts.values()) == len(results)


def _summary_case():
    """Two 128 px images: the hand-made one (in COCO form) and one with a small miss."""
    names = [n for n in OBJECTS]
    anns = []
    for n in names:
        cat, (x1, y1, x2, y2) = OBJECTS[n]
        anns.append({"image_id": 1, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "area": (x2 - x1) * (y2 - y1), "iscrowd": int(n == "crowd")})  # fmt: skip
    anns.append({"image_id": 2, "category_id": 3, "bbox": [5, 5, 4, 4], "area": 16, "iscrowd": 0})
    anns.append({"image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 30], "area": 900,
                 "iscrowd": 0})  # fmt: skip
    for i, a in enumerate(anns):
        a["id"] = i + 1
    results = [
        {"image_id": 1, "category_id": c, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
         "score": s}
        for c, b, s, _ in DETECTIONS
    ]  # fmt: skip
    results.append({"image_id": 2, "category_id": 3, "bbox": [50, 50, 30, 30], "score": 0.99})
    gt = {
        "images": [{"id": i, "width": 128, "height": 128} for i in (2, 1)],
        "annotations": anns,
        "categories": [{"id": c, "name": f"class{c}"} for c in (1, 2, 3, 4)],
    }
    return gt, results


def test_error_summary_counts_sizes_and_confusions():
    gt, results = _summary_case()
    s = error_summary(gt, results)
    assert s.image_size == 128
    assert s.object_counts == {"hit": 1, "wrong_class": 2, "poor_box": 1, "missed": 2}
    assert s.detection_counts == {
        "hit": 1, "duplicate": 1, "wrong_class": 2, "poor_box": 1,
        "wrong_class_poor_box": 1, "background": 1, "in_crowd": 1,
    }  # fmt: skip
    assert s.false_positives == 6 and s.misses == 5
    assert s.background_where == {"crowd_region": 0, "inside_object": 0, "elsewhere": 1}
    np.testing.assert_array_equal(s.objects_and_misses_per_image(), [[4, 3], [2, 2]])
    # at 128 px small is below 6.4^2 ~ 41 px^2, large from 19.2^2 ~ 369 px^2
    assert s.objects_by_size["small"] == {"hit": 0, "wrong_class": 0, "poor_box": 0, "missed": 1}
    assert s.objects_by_size["medium"]["hit"] == 1 and s.objects_by_size["medium"]["missed"] == 1
    assert s.objects_by_size["large"] == {"hit": 0, "wrong_class": 1, "poor_box": 0, "missed": 0}
    # rows: object class, columns: detected class (class 2 taken for class 3 twice)
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 1
    expected[1, 2] = 2
    np.testing.assert_array_equal(s.confusion, expected)
    assert s.top_confusions(3) == [("class2", "class3", 2)]
    assert list(s.per_image) == [1, 2]  # by image id


def test_failures_are_ordered_and_filtered():
    gt, results = _summary_case()
    s = error_summary(gt, results)
    every = s.failures()
    assert len(every) == s.false_positives + s.misses
    scores = [f.score for f in every]
    assert scores == sorted(scores, reverse=True)
    first = every[0]  # the 0.99 class-3 box on the large class-2 object, both views of it
    assert (first.image_id, first.kind, first.score, first.size) == (
        2,
        "wrong_class",
        0.99,
        "large",
    )
    missed = s.failures("missed")
    assert [(f.image_id, f.size) for f in missed] == [(1, "medium"), (2, "small")]  # big first
    assert all(f.side == "object" and f.score == 0 for f in missed)
    background = s.failures("background", side="detection")
    assert len(background) == 1 and background[0].size == "" and background[0].score == 0.6
    assert s.failures("duplicate", side="object") == []
    with pytest.raises(ValueError, match="failure kind"):
        s.failures("hit")
    with pytest.raises(ValueError, match="side must be"):
        s.failures(side="objects")


def test_background_in_a_crowd_or_on_a_part_of_an_object():
    gt = {
        "images": [{"id": 3, "width": 128, "height": 128}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 6, "bbox": [0, 0, 40, 80], "area": 900},
            {"id": 2, "image_id": 3, "category_id": 4, "bbox": [60, 60, 30, 30], "area": 200,
             "iscrowd": 1},
        ],
        "categories": [{"id": c, "name": f"class{c}"} for c in (1, 4, 6)],
    }  # fmt: skip
    results = [
        {"image_id": 3, "category_id": 4, "bbox": [10, 0, 10, 10], "score": 0.9},  # a head
        {"image_id": 3, "category_id": 1, "bbox": [62, 62, 4, 4], "score": 0.8},  # in the crowd
        {"image_id": 3, "category_id": 1, "bbox": [100, 100, 9, 9], "score": 0.7},
    ]
    s = error_summary(gt, results)
    assert s.detection_counts["background"] == 3  # a crowd of class 4 absorbs only class 4
    assert s.background_where == {"crowd_region": 1, "inside_object": 1, "elsewhere": 1}
    np.testing.assert_array_equal(s.objects_and_misses_per_image(), [[1, 1]])


def test_error_summary_refuses_unknown_images():
    gt, results = _summary_case()
    with pytest.raises(ValueError, match="image 99"):
        error_summary(gt, results + [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1],
                                      "score": 0.9}])  # fmt: skip


def test_size_classes_are_the_datas_and_cocos_scaled_ranges():
    ranges = scaled_area_ranges(128)
    bounds = [ranges["small"][1], ranges["medium"][1]]
    areas = np.array([1.0, 40.0, 41.0, 100.0, 368.0, 369.0, 5000.0, *bounds])
    ours = size_classes(areas, 128)
    assert list(ours[:7]) == ["small", "small", "medium", "medium", "medium", "large", "large"]
    np.testing.assert_array_equal(ours, size_class_of(np.sqrt(areas), 128))
