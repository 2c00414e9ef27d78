"""Tests for rcnn_steps.evaluation (chapter 00): AP worked out by hand, COCO box AP from
scratch equal to pycocotools' COCOeval, and the COCOeval wrapper for boxes, masks and
keypoints."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rcnn_steps.evaluation import (
    COCO_AREA_RANGES,
    COCO_RECALL_THRESHOLDS,
    average_precision_area,
    average_precision_coco101,
    average_precision_voc11,
    coco_box_ap_from_scratch,
    coco_evaluate,
    detections_to_coco,
    match_detections,
    precision_recall,
    scaled_area_ranges,
)
from rcnn_steps.evaluation.matching import _iou_xywh

SIZE = 128
STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
STAT_NAMES += ["AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
# the from-scratch function reports AR at its max_dets (100) and per area range
SCRATCH_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"]

# the largest |from scratch - pycocotools| seen (for the curious: pytest -s prints it)
_LARGEST_DIFFERENCE = [0.0]


# ---------------------------------------------------------------------------------------
# helpers: in-memory COCO ground truths, and pycocotools run directly


KEYPOINT_NAMES = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]


def _pycocotools_stats(
    gt: dict, dets: list[dict], iou_type: str = "bbox", area_ranges=None, sigmas=None
):
    """COCOeval's ``stats`` by name, run the plain way (no rcnn_steps code)."""
    labels = ["all", "medium", "large"] if iou_type == "keypoints" else ["all", "small"]
    labels += [] if iou_type == "keypoints" else ["medium", "large"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        res = coco.loadRes(json.loads(json.dumps(dets)))
        ev = COCOeval(coco, res, iou_type)
        if area_ranges is not None:
            ev.params.areaRng = [list(area_ranges[k]) for k in labels]
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas)
            ev.params.catIds = [c["id"] for c in gt["categories"] if "keypoints" in c]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = KEYPOINT_NAMES if iou_type == "keypoints" else STAT_NAMES
    return dict(zip(names, ev.stats.tolist(), strict=True))


def _assert_scratch_equals_pycocotools(gt, dets, area_ranges):
    ours = coco_box_ap_from_scratch(gt, dets, area_ranges=area_ranges)
    theirs = _pycocotools_stats(
        gt, dets, area_ranges=COCO_AREA_RANGES if area_ranges == "coco" else area_ranges
    )
    for name in SCRATCH_NAMES:
        difference = abs(ours[name] - theirs[name])
        _LARGEST_DIFFERENCE[0] = max(_LARGEST_DIFFERENCE[0], difference)
        assert difference < 1e-9, (name, ours[name], theirs[name])
    return ours


def _random_coco(seed: int, integer_boxes: bool, tie_scores: bool):
    """Random ground truths and noisy detections over a dozen 128 x 128 images, with every
    case COCOeval treats specially (the asserts at the end check they are all there)."""
    rng = np.random.default_rng(seed)
    categories = [
        {"id": 1, "name": "square"},
        {"id": 2, "name": "disc"},
        {"id": 5, "name": "never-annotated"},  # a category without ground truth
        {
            "id": 7,
            "name": "person",
            "keypoints": ["head", "left_hand", "right_hand"],
            "skeleton": [[0, 1], [0, 2]],
            "flip_pairs": [[1, 2]],
            "oks_sigmas": [0.03, 0.07, 0.07],
        },
    ]
    gt_categories = [1, 2, 7]
    # image ids neither contiguous nor listed in order: COCOeval sorts them
    image_ids = [int(i) for i in rng.permutation(np.arange(12) * 3 + 100)]
    images = [{"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.png"} for i in image_ids]

    def box(min_side, max_side):
        w, h = np.exp(rng.uniform(np.log(min_side), np.log(max_side), size=2))
        x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
        b = np.array([x, y, w, h])
        return np.maximum(np.round(b), [0, 0, 1, 1]) if integer_boxes else b

    def score():
        s = rng.uniform(0.01, 1.0)
        return round(s, 1) if tie_scores else s  # rounding makes many exact ties

    annotations, dets = [], []
    for n, image_id in enumerate(image_ids):
        num_objects = 0 if n < 2 else int(rng.integers(1, 7))  # two images without objects
        for j in range(num_objects):
            crowd = rng.random() < 0.12 or (n == 2 and j == 0)  # at least one crowd
            cat = int(rng.choice(gt_categories))
            b = box(20, 100) if crowd else box(3, 110)
            # the "area" field is the mask's area, smaller than the box's
            area = float(b[2] * b[3] * rng.uniform(0.45, 1.0))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": b.tolist(),
                    "area": area,
                    "iscrowd": int(crowd),
                }
            )
            # noisy detections of the object (sometimes none, sometimes duplicates)
            for _ in range(int(rng.poisson(1.3))):
                if crowd:  # a small detection inside the crowd region
                    w, h = b[2:] * rng.uniform(0.1, 0.5, size=2)
                    d = [b[0] + rng.uniform(0, b[2] - w), b[1] + rng.uniform(0, b[3] - h), w, h]
                else:
                    d = b + rng.normal(0, 0.08, size=4) * np.r_[b[2:], b[2:]]
                    d[2:] = np.maximum(d[2:], 1)
                d = np.round(d) if integer_boxes else np.asarray(d)
                label = cat if rng.random() < 0.9 else int(rng.choice(gt_categories))
                dets.append(
                    {
                        "image_id": image_id,
                        "category_id": label,
                        "bbox": d.tolist(),
                        "score": score(),
                    }
                )
        # false positives, including some for the category without ground truth and one
        # for a category the ground truth does not know (COCOeval skips it)
        if n != 0:  # image 0 is empty and has no detections either
            for _ in range(int(rng.poisson(3))):
                cat = int(rng.choice([1, 2, 5, 7, 9]))
                dets.append(
                    {
                        "image_id": image_id,
                        "category_id": cat,
                        "bbox": box(3, 80).tolist(),
                        "score": score(),
                    }
                )
    # one image-category with more than 100 detections: COCOeval keeps the best 100
    crowded = image_ids[5]
    for _ in range(130):
        dets.append(
            {"image_id": crowded, "category_id": 1, "bbox": box(3, 60).tolist(), "score": score()}
        )
    order = rng.permutation(len(dets))
    dets = [dets[i] for i in order]  # results arrive in no particular order
    gt = {"images": images, "annotations": annotations, "categories": categories}

    # the special cases are really there
    assert any(a["iscrowd"] for a in annotations)
    assert {a["image_id"] for a in annotations} != set(image_ids)  # images without objects
    assert not any(a["category_id"] == 5 for a in annotations)
    assert any(d["category_id"] == 5 for d in dets)
    assert sum(d["image_id"] == crowded and d["category_id"] == 1 for d in dets) > 100
    if tie_scores:
        assert len({d["score"] for d in dets}) < len(dets)
    return gt, dets


def _known_categories(gt: dict, dets: list[dict]) -> list[dict]:
    """The detections of categories the ground truth has (COCOeval skips the others
    without a word; coco_evaluate rejects them)."""
    known = {c["id"] for c in gt["categories"]}
    return [d for d in dets if d["category_id"] in known]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (as crowd annotations store it): run lengths in column-major
    order, starting with a run of zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    return {"size": list(mask.shape), "counts": runs}


def _masks_coco(seed: int = 0):
    """A small set with masks and keypoints, like the synthetic set: rectangles and discs,
    a keypoint category (with oks_sigmas), a crowd region stored as uncompressed RLE.

    Returns the COCO dict and, for each non-crowd annotation, its binary mask."""
    rng = np.random.default_rng(seed)
    categories = [
        {"id": 1, "name": "square", "supercategory": "shape"},
        {"id": 2, "name": "disc", "supercategory": "shape"},
        {
            "id": 3,
            "name": "person",
            "supercategory": "articulated",
            "keypoints": ["head", "left_hand", "right_hand"],
            "skeleton": [[0, 1], [0, 2]],
            "flip_pairs": [[1, 2]],
            "oks_sigmas": [0.05, 0.08, 0.08],
        },
    ]
    images, annotations, masks = [], [], {}
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for image_id in range(1, 7):
        images.append(
            {"id": image_id, "width": SIZE, "height": SIZE, "file_name": f"{image_id}.png"}
        )
        for _ in range(int(rng.integers(1, 4))):
            cat = int(rng.integers(1, 4))
            side = int(rng.integers(5, 60))
            x0, y0 = (int(v) for v in rng.integers(0, SIZE - side, size=2))
            if cat == 2:
                r = side / 2
                mask = (xx - x0 - r + 0.5) ** 2 + (yy - y0 - r + 0.5) ** 2 <= r * r
            else:
                mask = (xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)
            ys, xs = np.nonzero(mask)
            x, y = int(xs.min()), int(ys.min())
            w, h = int(xs.max()) - x + 1, int(ys.max()) - y + 1
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat,
                "bbox": [x, y, w, h],
                "area": float(mask.sum()),
                "iscrowd": 0,
                "segmentation": {"size": [SIZE, SIZE], "counts": rle["counts"].decode()},
            }
            if cat == 3:
                points = [x + w / 2, y + 2, 2, x + 1, y + h / 2, 2, x + w - 2, y + h / 2, 1]
                ann["keypoints"] = [float(v) for v in points]
                ann["num_keypoints"] = 3
            annotations.append(ann)
            masks[ann["id"]] = mask
    crowd = np.zeros((SIZE, SIZE), dtype=bool)
    crowd[90:120, 5:40] = True
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 1,
            "category_id": 2,
            "bbox": [5, 90, 35, 30],
            "area": float(crowd.sum()),
            "iscrowd": 1,
            "segmentation": _uncompressed_rle(crowd),
        }
    )
    return {"images": images, "annotations": annotations, "categories": categories}, masks


def _perfect_detections(gt: dict, masks: dict) -> list[dict]:
    """The ground truth as a model would output it, through detections_to_coco: boxes in
    xyxy, soft masks (N, 1, H, W), keypoints (N, K, 3), labels mapped to category ids."""
    rng = np.random.default_rng(1)
    label_to_category_id = {10: 1, 20: 2, 30: 3}  # model labels differ from category ids
    category_to_label = {v: k for k, v in label_to_category_id.items()}
    results = []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64)
        boxes[:, 2:] += boxes[:, :2]
        soft = np.stack([np.where(masks[a["id"]], 0.8, 0.3) for a in anns])[:, None]
        points = torch.tensor([a.get("keypoints", [0.0] * 9) for a in anns]).reshape(-1, 3, 3)
        results += detections_to_coco(
            image["id"],
            boxes,
            torch.tensor(rng.uniform(0.5, 1.0, len(anns))),
            torch.tensor([category_to_label[a["category_id"]] for a in anns]),
            label_to_category_id,
            masks=torch.from_numpy(soft),
            keypoints=points,
        )
    return results


# ---------------------------------------------------------------------------------------
# area ranges


def test_scaled_area_ranges_keep_the_fraction_of_the_image():
    ranges = scaled_area_ranges(128)
    assert list(ranges) == ["all", "small", "medium", "large"]
    # (32 * 128/640)^2 = 6.4^2 and (96 * 128/640)^2 = 19.2^2
    assert ranges["small"] == pytest.approx((0.0, 6.4**2))
    assert ranges["medium"] == pytest.approx((6.4**2, 19.2**2))
    assert ranges["large"][0] == pytest.approx(19.2**2)
    assert ranges["large"][1] > SIZE * SIZE  # still unbounded in practice
    assert scaled_area_ranges(640) == COCO_AREA_RANGES
    with pytest.raises(ValueError):
        scaled_area_ranges(0)


# ---------------------------------------------------------------------------------------
# the PR curve and AP, by hand


def test_precision_recall_and_the_three_aps_by_hand():
    # five detections, given out of order; ranked by score they are TP, FP, TP, TP, FP,
    # and there are four objects to find
    scores = [0.6, 0.9, 0.5, 0.8, 0.7]
    is_tp = [True, True, False, False, True]
    precision, recall = precision_recall(scores, is_tp, num_ground_truth=4)
    # after k detections: TP = 1, 1, 2, 3, 3
    np.testing.assert_allclose(precision, [1 / 1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 4, 1 / 4, 2 / 4, 3 / 4, 3 / 4])

    # interpolated precision (best precision at this recall or beyond):
    # recall 0.25 -> 1, recall 0.5 -> 0.75, recall 0.75 -> 0.75, beyond 0.75 -> 0
    # 11-point: t = 0, 0.1, 0.2 -> 1; t = 0.3 ... 0.7 (5 points) -> 0.75; t = 0.8, 0.9, 1 -> 0
    assert average_precision_voc11(recall, precision) == pytest.approx((3 * 1 + 5 * 0.75) / 11)
    # 101-point: r = 0.00 ... 0.25 (26 points) -> 1; r = 0.26 ... 0.75 (50) -> 0.75; rest 0
    assert average_precision_coco101(recall, precision) == pytest.approx((26 + 50 * 0.75) / 101)
    # area: recall steps 0 -> 0.25 at 1, 0.25 -> 0.5 at 0.75, 0.5 -> 0.75 at 0.75
    assert average_precision_area(recall, precision) == pytest.approx(0.25 + 0.25 * 0.75 * 2)


def test_ap_of_a_perfect_ranking_is_one_and_of_nothing_found_is_zero():
    precision, recall = precision_recall([0.9, 0.8, 0.1], [True, True, False], 2)
    for ap in (average_precision_voc11, average_precision_coco101, average_precision_area):
        assert ap(recall, precision) == pytest.approx(1.0)
    precision, recall = precision_recall([0.9, 0.8], [False, False], 3)
    for ap in (average_precision_voc11, average_precision_coco101, average_precision_area):
        assert ap(recall, precision) == 0.0
    precision, recall = precision_recall([], [], 3)  # no detections at all
    assert precision.shape == recall.shape == (0,)
    assert average_precision_coco101(recall, precision) == 0.0
    assert average_precision_voc11(recall, precision) == 0.0
    with pytest.raises(ValueError):
        precision_recall([0.5], [True], 0)


def test_coco_recall_thresholds_are_not_exact_decimals_and_cocoeval_agrees():
    # 7 of 10 objects found, no false positive: recall 0.7 exactly. COCOeval's 0.70
    # threshold is 0.7000000000000001, so only 0.00 ... 0.69 (70 of 101) are reached.
    assert COCO_RECALL_THRESHOLDS[70] > 0.7
    precision, recall = precision_recall(np.linspace(1, 0.5, 7), [True] * 7, 10)
    assert recall[-1] == 0.7
    assert average_precision_coco101(recall, precision) == pytest.approx(70 / 101)
    # the exact-decimal 11-point AP does count t = 0.7: 8 of 11 thresholds
    assert average_precision_voc11(recall, precision) == pytest.approx(8 / 11)

    # and pycocotools, on the same situation as boxes, says the same
    gt = {
        "images": [{"id": 1, "width": SIZE, "height": SIZE}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [12 * i, 5, 10, 10]}
            | {"area": 100.0, "iscrowd": 0}
            for i in range(10)
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [12 * i, 5, 10, 10], "score": 1 - i / 10}
        for i in range(7)
    ]
    ours = _assert_scratch_equals_pycocotools(gt, dets, "coco")
    assert ours["AP"] == pytest.approx(70 / 101)


@settings(max_examples=60, deadline=None)
@given(
    outcomes=st.lists(st.booleans(), min_size=1, max_size=40),
    extra_gt=st.integers(0, 5),
)
def test_pr_curve_invariants_and_ranked_tps_first(outcomes, extra_gt):
    num_gt = sum(outcomes) + extra_gt
    if num_gt == 0:
        return
    scores = np.linspace(1.0, 0.0, len(outcomes))
    precision, recall = precision_recall(scores, outcomes, num_gt)
    assert np.all(np.diff(recall) >= 0)
    assert recall[-1] == pytest.approx(sum(outcomes) / num_gt)
    np.testing.assert_allclose(precision * np.arange(1, len(outcomes) + 1), np.cumsum(outcomes))
    aps = [
        f(recall, precision)
        for f in (average_precision_voc11, average_precision_coco101, average_precision_area)
    ]
    assert all(0.0 <= ap <= 1.0 for ap in aps)

    # with every true positive ranked first, precision is 1 up to the final recall R:
    # area AP = R; the sampled APs count the thresholds <= R (none if nothing was found)
    if not any(outcomes):
        return
    ranked = sorted(outcomes, reverse=True)
    precision, recall = precision_recall(scores, ranked, num_gt)
    final = sum(outcomes) / num_gt
    assert average_precision_area(recall, precision) == pytest.approx(final)
    expected_voc = np.count_nonzero(np.arange(11) / 10 <= recall[-1]) / 11
    assert average_precision_voc11(recall, precision) == pytest.approx(expected_voc)
    expected_coco = np.count_nonzero(COCO_RECALL_THRESHOLDS <= recall[-1]) / 101
    assert average_precision_coco101(recall, precision) == pytest.approx(expected_coco)


# ---------------------------------------------------------------------------------------
# matching


def test_iou_xywh_equals_pycocotools_including_crowds():
    rng = np.random.default_rng(0)
    dets = np.c_[rng.uniform(0, 100, (30, 2)), rng.uniform(0, 40, (30, 2))]
    gts = np.c_[rng.uniform(0, 100, (12, 2)), rng.uniform(1, 40, (12, 2))]
    dets[:3] = np.round(dets[:3])
    dets[3, 2] = 0.0  # a degenerate detection
    iscrowd = rng.random(12) < 0.4
    ours = _iou_xywh(dets, gts, iscrowd)
    theirs = mask_utils.iou(dets.tolist(), gts.tolist(), iscrowd.astype(np.uint8).tolist())
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert ours.shape == (30, 12) and np.any(ours > 0.1)


def test_match_detections_duplicates_crowds_and_input_order():
    gt_boxes = [[0, 0, 10, 10], [20, 20, 60, 60]]  # an object and a crowd region (xyxy)
    det_boxes = [
        [25, 25, 30, 30],  # small, inside the crowd: IoU = 25 / 25 = 1 -> absorbed
        [0, 0, 10, 10],  # the object: TP
        [0, 0, 10, 11],  # a duplicate of the object: FP, the object is taken
        [40, 40, 50, 52],  # also inside the crowd: crowds absorb any number
        [80, 80, 90, 90],  # nothing there: FP
    ]
    scores = [0.7, 0.9, 0.8, 0.6, 0.5]
    m = match_detections(det_boxes, scores, gt_boxes, gt_iscrowd=[False, True])
    np.testing.assert_array_equal(m.gt_index, [1, 0, -1, 1, -1])
    np.testing.assert_array_equal(m.ignored, [True, False, False, True, False])
    np.testing.assert_array_equal(m.is_true_positive, [False, True, False, False, False])
    np.testing.assert_array_equal(m.is_false_positive, [False, False, True, False, True])
    # under an ordinary IoU the small detection would overlap the crowd by only 25 / 1600
    assert _iou_xywh([[25, 25, 5, 5]], [[20, 20, 40, 40]], [False])[0, 0] < 0.02

    # the duplicate only takes the object if the better detection is gone
    m = match_detections(det_boxes[2:3], scores[2:3], gt_boxes, [False, True])
    np.testing.assert_array_equal(m.is_true_positive, [True])


def test_match_prefers_a_regular_gt_to_a_better_ignored_one():
    # xywh: the detection overlaps an ignored gt at IoU 1.0 and the regular gt at IoU 0.6;
    # the ignored gt comes first, but COCOeval visits regular ground truths first
    gt_boxes = [[0, 0, 6, 10], [0, 0, 10, 10]]
    det_boxes = [[0, 0, 6, 10]]
    ignore = [True, False]
    m = match_detections(det_boxes, [0.9], gt_boxes, None, 0.5, gt_ignore=ignore, box_format="xywh")
    np.testing.assert_array_equal(m.gt_index, [1])
    assert not m.ignored[0]
    # above IoU 0.6 the regular gt is out of reach, and the ignored one takes it
    m = match_detections(det_boxes, [0.9], gt_boxes, None, 0.7, gt_ignore=ignore, box_format="xywh")
    np.testing.assert_array_equal(m.gt_index, [0])
    assert m.ignored[0]
    # an IoU exactly at the threshold counts (>=)
    m = match_detections(det_boxes, [0.9], gt_boxes[1:], None, 0.6, box_format="xywh")
    np.testing.assert_array_equal(m.gt_index, [0])
    # with equal IoUs the later ground truth wins (COCOeval's ">=")
    m = match_detections([[0, 0, 10, 10]], [0.9], [[0, 0, 10, 5], [0, 5, 10, 5]], box_format="xywh")
    np.testing.assert_array_equal(m.gt_index, [1])


# ---------------------------------------------------------------------------------------
# COCO box AP from scratch == pycocotools


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ranges", ["coco", "scaled"])
def test_coco_box_ap_from_scratch_equals_cocoeval(seed, ranges):
    integer_boxes, tie_scores = seed % 2 == 1, seed % 3 != 2
    gt, dets = _random_coco(seed, integer_boxes=integer_boxes, tie_scores=tie_scores)
    area_ranges = "coco" if ranges == "coco" else scaled_area_ranges(SIZE)
    ours = _assert_scratch_equals_pycocotools(gt, dets, area_ranges)
    # a meaningful comparison: neither trivial nor degenerate
    assert 0.05 < ours["AP"] < 0.95
    if ranges == "scaled":  # at 128 px all three size buckets are populated
        assert all(ours[k] > -1 for k in ("APs", "APm", "APl"))


def test_coco_box_ap_from_scratch_defaults_to_scaled_ranges_and_reads_any_input(tmp_path):
    gt, dets = _random_coco(11, integer_boxes=False, tie_scores=True)
    default = coco_box_ap_from_scratch(gt, dets)
    assert default == coco_box_ap_from_scratch(gt, dets, area_ranges=scaled_area_ranges(SIZE))
    assert default != coco_box_ap_from_scratch(gt, dets, area_ranges="coco")
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    assert coco_box_ap_from_scratch(path, dets) == default
    assert coco_box_ap_from_scratch(coco, dets) == default
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_box_ap_from_scratch(gt, [dict(dets[0], image_id=-5)])


def test_coco_box_ap_from_scratch_max_dets_equals_cocoeval():
    gt, dets = _random_coco(3, integer_boxes=True, tie_scores=True)
    ours = coco_box_ap_from_scratch(gt, dets, area_ranges="coco", max_dets=10)
    # (coco_evaluate rejects the category-9 detections COCOeval skips: leave them out)
    known = _known_categories(gt, dets)
    theirs = coco_evaluate(gt, known, "bbox", area_ranges="coco", max_dets=[1, 5, 10])
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "ARs", "ARm", "ARl"):
        assert ours[name] == pytest.approx(theirs[name], abs=1e-9), name
    # keeping fewer detections per image cannot raise recall
    assert ours["AR10"] <= coco_box_ap_from_scratch(gt, dets, area_ranges="coco")["AR100"]


def test_coco_box_ap_from_scratch_visits_regular_gts_before_a_crowd_listed_first():
    # the crowd (listed first) covers the detection entirely (crowd IoU 1.0); the object
    # overlaps it at IoU 0.7: up to IoU 0.7 the detection finds the object
    gt = {
        "images": [{"id": 1, "width": SIZE, "height": SIZE}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40]}
            | {"area": 1600.0, "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 7]}
            | {"area": 70.0, "iscrowd": 0},
        ],
    }
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}]
    ours = _assert_scratch_equals_pycocotools(gt, dets, "coco")
    assert ours["AP50"] == pytest.approx(1.0)
    assert ours["AP"] == pytest.approx(5 / 10)  # thresholds 0.50 ... 0.70 of 10


# the same comparison on tiny worlds that hypothesis can shrink: boxes on a coarse grid make
# IoUs that tie and land exactly on thresholds, scores from a short list make ties
_grid_box = st.tuples(
    st.integers(0, 6), st.integers(0, 6), st.integers(1, 5), st.integers(1, 5)
).map(lambda b: [8.0 * b[0], 8.0 * b[1], 8.0 * b[2], 8.0 * b[3]])
_gt_st = st.tuples(
    st.integers(1, 2), st.integers(1, 2), _grid_box, st.booleans(), st.floats(0.3, 1.0)
)
_det_st = st.tuples(
    st.integers(1, 2), st.integers(1, 3), _grid_box, st.sampled_from([0.2, 0.5, 0.9])
)


@settings(max_examples=40, deadline=None)
@given(gts=st.lists(_gt_st, max_size=8), dts=st.lists(_det_st, max_size=12))
def test_coco_box_ap_from_scratch_equals_cocoeval_on_small_grids(gts, dts):
    images = [{"id": i, "width": 64, "height": 64} for i in (1, 2)]
    annotations = [
        {"id": n + 1, "image_id": img, "category_id": cat, "bbox": box}
        | {"area": box[2] * box[3] * fill, "iscrowd": int(crowd and n % 3 == 0)}
        for n, (img, cat, box, crowd, fill) in enumerate(gts)
    ]
    gt = {"images": images, "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}
    gt["annotations"] = annotations
    dets = [
        {"image_id": img, "category_id": cat, "bbox": box, "score": s} for img, cat, box, s in dts
    ]
    if not dets:
        return  # pycocotools cannot load an empty result list (coco_evaluate handles it)
    _assert_scratch_equals_pycocotools(gt, dets, scaled_area_ranges(64))


# ---------------------------------------------------------------------------------------
# coco_evaluate: pycocotools for boxes, masks and keypoints


def test_coco_evaluate_equals_plain_cocoeval_for_every_input_kind(tmp_path, capsys):
    gt, all_dets = _random_coco(4, integer_boxes=False, tie_scores=False)
    theirs = _pycocotools_stats(gt, all_dets)  # COCO's own ranges and maxDets
    with pytest.raises(ValueError, match="category_id 9, which is not in the ground truth"):
        coco_evaluate(gt, all_dets)  # COCOeval skips them; we say so
    dets = _known_categories(gt, all_dets)  # the same numbers without them
    ours = coco_evaluate(gt, dets, "bbox", area_ranges="coco")
    assert list(ours) == STAT_NAMES
    for name in STAT_NAMES:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name
    assert capsys.readouterr().out == ""  # quiet unless verbose

    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    det_path = tmp_path / "dets.json"
    det_path.write_text(json.dumps(dets))
    assert coco_evaluate(path, det_path, area_ranges="coco") == ours
    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    assert coco_evaluate(coco, dets, area_ranges="coco") == ours
    # the caller's detections are not written into (COCO.loadRes adds id, area, ...)
    assert set(dets[0]) == {"image_id", "category_id", "bbox", "score"}

    capsys.readouterr()
    coco_evaluate(gt, dets, verbose=True)
    assert "AP50" in capsys.readouterr().out

    # default ranges are scaled to the images, and equal the from-scratch numbers
    scaled = coco_evaluate(gt, dets)
    scratch = coco_box_ap_from_scratch(gt, dets)
    for name in SCRATCH_NAMES:
        assert scaled[name] == pytest.approx(scratch[name], abs=1e-9), name
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_evaluate(gt, [dict(dets[0], image_id=-5)])


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_coco_evaluate_perfect_predictions_score_one(iou_type):
    gt, masks = _masks_coco()
    dets = _perfect_detections(gt, masks)
    metrics = coco_evaluate(gt, dets, iou_type)
    names = KEYPOINT_NAMES if iou_type == "keypoints" else STAT_NAMES
    assert list(metrics) == names
    # COCOeval divides by (tp + fp + eps), so a perfect score is 1 - 2e-16, not exactly 1
    for name in ("AP", "AP50", "AP75"):
        assert metrics[name] == pytest.approx(1.0, abs=1e-9), name
    for name, value in metrics.items():
        if name == "AR1":  # one detection per image cannot find two objects of a class
            assert 0.5 < value < 1.0
        else:
            assert value == pytest.approx(1.0, abs=1e-9) or value == -1.0, name
    assert sum(v > -1 for v in metrics.values()) >= len(names) - 2


def test_coco_evaluate_keypoints_use_the_category_sigmas():
    gt, masks = _masks_coco()
    dets = _perfect_detections(gt, masks)
    rng = np.random.default_rng(0)
    for d in dets:
        if d["category_id"] == 3:
            k = np.asarray(d["keypoints"]).reshape(-1, 3)
            k[:, :2] += rng.normal(0, 1.5, size=(len(k), 2))  # a little noise
            d["keypoints"] = k.reshape(-1).tolist()
    sigmas = gt["categories"][2]["oks_sigmas"]
    default = coco_evaluate(gt, dets, "keypoints")
    assert default == coco_evaluate(gt, dets, "keypoints", kpt_oks_sigmas=sigmas)
    assert 0.0 < default["AP"] < 1.0
    # the same numbers as COCOeval run by hand with these sigmas and scaled ranges
    theirs = _pycocotools_stats(gt, dets, "keypoints", scaled_area_ranges(SIZE), sigmas)
    assert default == pytest.approx(theirs, abs=1e-12)
    # wider sigmas forgive more: a higher OKS, so a higher AP
    wide = coco_evaluate(gt, dets, "keypoints", kpt_oks_sigmas=np.asarray(sigmas) * 3)
    assert wide["AP"] > default["AP"]


def test_coco_evaluate_segm_uses_mask_area_not_box_area():
    gt, masks = _masks_coco()
    dets = _perfect_detections(gt, masks)
    # make every false positive mask tiny but give it a huge box; its area must come from
    # the mask (the box is dropped), so it falls in the "small" bucket
    blob = np.zeros((SIZE, SIZE, 1), dtype=np.uint8)
    blob[2:4, 2:4] = 1
    rle = mask_utils.encode(np.asfortranarray(blob))[0]
    fp = {"image_id": 2, "category_id": 1, "score": 0.99}
    fp["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    with_box = coco_evaluate(gt, [*dets, dict(fp, bbox=[0.0, 0.0, 120.0, 120.0])], "segm")
    without_box = coco_evaluate(gt, [*dets, fp], "segm")
    assert with_box == without_box
    # plain COCOeval agrees once the boxes are gone (with them, loadRes would take every
    # area from the box; with some missing, it fails: it looks only at the first result)
    masks_only = [{k: v for k, v in d.items() if k != "bbox"} for d in [*dets, fp]]
    theirs = _pycocotools_stats(gt, masks_only, "segm", scaled_area_ranges(SIZE))
    assert without_box == pytest.approx(theirs, abs=1e-12)
    assert without_box["APl"] == pytest.approx(1.0)  # the tiny false positive is not large
    assert without_box["AP"] < 1.0


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_coco_evaluate_empty_detections(iou_type):
    gt, _ = _masks_coco()
    with pytest.warns(UserWarning, match="no detections"):
        metrics = coco_evaluate(gt, [], iou_type)
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0
    assert all(v in (0.0, -1.0) for v in metrics.values())
    # keypoint results for other categories only: nothing left to evaluate, same answer
    if iou_type == "keypoints":
        box_only = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
        with pytest.warns(UserWarning, match="no detections"):
            assert coco_evaluate(gt, box_only, iou_type) == metrics


def test_coco_evaluate_rejects_annotation_id_zero():
    gt, dets = _random_coco(0, integer_boxes=True, tie_scores=True)
    gt["annotations"][0]["id"] = 0
    with pytest.raises(ValueError, match="id 0"):
        coco_evaluate(gt, dets)


def _wrong_scoring_cases():
    """(change to one detection, what the error says) for inputs that COCOeval scores
    wrong without a word, or fails on with a bare error."""
    nan = float("nan")
    return [
        # a nan box matches any ground truth: perfect AP for nan boxes
        ({"bbox": [nan, nan, nan, nan]}, r"detection 0 \(image_id 1\) has bbox \[nan.*finite"),
        ({"bbox": [0.0, 0.0, float("inf"), 4.0]}, r"has bbox .*four finite numbers"),
        ({"bbox": ["0", 0, 4, 4]}, r"has bbox \['0'.*four finite numbers"),
        ({"bbox": [0.0, 0.0, 4.0]}, r"has bbox \[0.0, 0.0, 4.0\]"),
        # a box of negative area falls outside every area range: its false positive vanishes
        ({"bbox": [10.0, 10.0, -4.0, 4.0]}, r"negative width or height"),
        # nan scores are ranked last, so false positives with them vanish
        ({"score": nan}, r"has score nan; scores must be finite"),
        ({"score": "0.9"}, r"has score '0.9'"),
        # COCOeval drops a detection of an unknown category silently
        ({"category_id": 99}, r"category_id 99, which is not in the ground truth's categories"),
        # a detection without a score used to raise a bare KeyError inside pycocotools
        ({"score": None}, r"has no 'score'"),
        ({"image_id": "1"}, r"image ids are ints, this one is a str"),
    ]


@pytest.mark.parametrize(("change", "message"), _wrong_scoring_cases())
def test_coco_evaluate_rejects_what_cocoeval_would_score_wrong(change, message):
    gt, masks = _masks_coco()
    dets = _perfect_detections(gt, masks)
    bad = dict(dets[0], **change)
    if change.get("score", 0) is None:
        del bad["score"]
    assert dets[0]["image_id"] == 1
    with pytest.raises(ValueError, match=message):
        coco_evaluate(gt, [bad, *dets[1:]])


def test_a_nan_box_would_score_perfect_ap_in_plain_cocoeval():
    # why coco_evaluate checks: pycocotools itself gives nan boxes a perfect score
    gt, masks = _masks_coco()
    dets = [dict(d, bbox=[float("nan")] * 4) for d in _perfect_detections(gt, masks)]
    assert _pycocotools_stats(gt, dets)["AP50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="finite"):
        coco_evaluate(gt, dets)


def test_coco_evaluate_checks_keypoint_results():
    gt, masks = _masks_coco()
    dets = _perfect_detections(gt, masks)
    i = next(i for i, d in enumerate(dets) if d["category_id"] == 3)
    short = dict(dets[i], keypoints=dets[i]["keypoints"][:6])
    with pytest.raises(ValueError, match=r"has 6 keypoint values; category 3 has 3 .* needs 9"):
        coco_evaluate(gt, [*dets[:i], short, *dets[i + 1 :]], "keypoints")
    nan_points = dict(dets[i], keypoints=[float("nan")] * 9)
    with pytest.raises(ValueError, match="keypoints that are not all finite"):
        coco_evaluate(gt, [*dets[:i], nan_points, *dets[i + 1 :]], "keypoints")


# ---------------------------------------------------------------------------------------
# detections_to_coco


def test_detections_to_coco_converts_boxes_masks_and_keypoints():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.5, 1.5, 2.0, 3.0]])
    probabilities = torch.zeros(2, 1, 8, 9)
    probabilities[0, 0, 2:5, 3:7] = 0.7
    probabilities[0, 0, 0, 0] = 0.5  # the threshold itself counts as inside
    probabilities[1, 0, 6:, :] = 0.49  # just below: outside
    keypoints = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3)
    out = detections_to_coco(
        7,
        boxes,
        torch.tensor([0.9, 0.2]),
        torch.tensor([1, 2]),
        [0, 11, 22],  # a sequence indexed by label
        masks=probabilities,
        keypoints=keypoints,
    )
    assert [d["category_id"] for d in out] == [11, 22]
    assert out[0]["bbox"] == [10.0, 20.0, 20.0, 40.0]
    assert out[1]["bbox"] == [0.5, 1.5, 1.5, 1.5]
    assert out[0]["score"] == pytest.approx(0.9) and out[0]["image_id"] == 7
    assert out[1]["keypoints"] == [float(v) for v in range(6, 12)]
    for d, p in zip(out, probabilities[:, 0].numpy(), strict=True):
        assert isinstance(d["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(d["segmentation"]), p >= 0.5)
    assert mask_utils.decode(out[1]["segmentation"]).sum() == 0
    json.dumps(out)  # plain Python types all the way down

    # (N, K, 2) keypoints get visibility 1; a dict maps labels; numpy input works too
    out = detections_to_coco(
        1, np.array([[0, 0, 4, 4]]), [0.5], [3], {3: 9}, keypoints=np.zeros((1, 2, 2))
    )
    assert out[0]["category_id"] == 9 and out[0]["keypoints"] == [0, 0, 1, 0, 0, 1]
    assert detections_to_coco(1, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0)) == []
    with pytest.raises(ValueError, match="no COCO category"):
        detections_to_coco(1, boxes, [0.9, 0.2], [1, 5], {1: 1})


# --- the pretend detector of chapter 00 -------------------------------------------------


def test_subset_ground_truth_keeps_only_those_images(tiny_synth):
    from rcnn_steps.evaluation import subset_ground_truth

    gt = json.loads((tiny_synth / "annotations" / "instances_val.json").read_text())
    ids = [gt["images"][0]["id"], gt["images"][2]["id"]]
    sub = subset_ground_truth(gt, ids)
    assert [img["id"] for img in sub["images"]] == ids
    assert {a["image_id"] for a in sub["annotations"]} <= set(ids)
    assert len(sub["annotations"]) == sum(a["image_id"] in ids for a in gt["annotations"])
    assert sub["categories"] == gt["categories"]
    with pytest.raises(ValueError, match="not in the ground truth"):
        subset_ground_truth(gt, [123456789])


def test_simulated_detections_follow_their_knobs(tiny_synth):
    from rcnn_steps.data import CocoDataset
    from rcnn_steps.evaluation import simulate_detections, subset_ground_truth

    ds = CocoDataset(tiny_synth / "val", tiny_synth / "annotations" / "instances_val.json")
    ids = ds.image_ids
    gt = subset_ground_truth(ds.coco.dataset, ids)

    def ap(**knobs):
        dets = simulate_detections(ds, ids, seed=1, **knobs)
        results = []
        for image_id, d in zip(ids, dets, strict=True):
            assert d["boxes"].shape == (len(d["scores"]), 4) and d["labels"].dtype == torch.int64
            assert bool((d["boxes"][:, 2:] > d["boxes"][:, :2]).all())
            results += detections_to_coco(
                image_id, d["boxes"], d["scores"], d["labels"], ds.label_to_category_id
            )
        return coco_evaluate(gt, results, iou_type="bbox")

    perfect = ap(box_noise=0.0, miss_rate=0.0, false_positives_per_image=0.0)
    assert perfect["AP"] > 0.99
    noisy = ap(box_noise=0.2, miss_rate=0.0, false_positives_per_image=0.0)
    assert noisy["AP75"] < perfect["AP75"] - 0.2
    all_missed = simulate_detections(ds, ids, miss_rate=1.0, false_positives_per_image=0.0)
    assert sum(len(d["boxes"]) for d in all_missed) == 0
    again = simulate_detections(ds, ids, box_noise=0.1, seed=1)
    once = simulate_detections(ds, ids, box_noise=0.1, seed=1)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(again, once, strict=True))
    with pytest.raises(ValueError, match="miss_rate"):
        simulate_detections(ds, ids, miss_rate=1.5)
