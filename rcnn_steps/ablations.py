"""The ablation grids of chapters 04 and 06: the papers' tables, at small scale.

Each grid is a list of named settings (overrides of
:class:`~rcnn_steps.faster_rcnn.DetectorConfig`), each with the paper's number beside it
(:func:`faster_rcnn_grid`). :func:`run_grid` trains and evaluates every (setting, seed)
pair with :func:`run_setting` and keeps the results file up to date after each run, so
an interrupted grid resumes where it stopped; at the end it summarises each setting over
the seeds (mean, min, max, std), because at this scale an effect is real only where it is
larger than the spread between seeds (GUIDE section 3).

Reproduced tables (Ren et al. 2015, "Faster R-CNN", VGG-16, PASCAL VOC 2007 test mAP at
IoU 0.5, in %; we report COCO box AP and AP50 on the synthetic set, whose AP50 is the
closer analogue of VOC mAP):

- ``table8``, Table 8 (anchor settings): 1 scale 1 ratio 65.8 (128^2) / 66.7 (256^2),
  1 scale 3 ratios 68.8 (128^2) / 67.9 (256^2), 3 scales 1 ratio 69.8, 3 scales 3 ratios
  69.9.
- ``table9``, Table 9 (lambda of the RPN loss, eq. 1, with the paper's normalisation):
  lambda 0.1 67.2, 1 68.9, 10 69.9, 100 69.1.
- ``table6``, Table 6's question (and Table 3's rows): the same detector trained and
  tested on selective search's proposals (up to 2000; Fast R-CNN) 66.9, or on its own
  RPN's 300 (Faster R-CNN, shared features) 69.9; both on the same training images.

And the RoI-layer tables of He et al. 2017, "Mask R-CNN" (COCO minival, ResNet-50; the
paper's numbers are AP / AP50 / AP75 in %, we report the same three, box AP, for a
Faster R-CNN whose only change is its RoI layer):

- ``table2c``, Table 2(c) (RoI layer, R50-C4, stride 16; mask AP): RoIPool
  26.9/48.8/26.4, RoIWarp max 27.2/49.2/27.1, RoIWarp avg 27.1/48.9/27.1, RoIAlign max
  30.2/51.0/31.8, RoIAlign avg 30.3/51.2/31.5; plus RoIAlign avg with the half-pixel
  correction (``roi_aligned=True``), which the paper did not run.
- ``table2d``, Table 2(d) (stride 32, R50-C5): RoIPool box 28.2/52.7/26.9 (mask
  23.6/46.5/21.6), RoIAlign box 34.0/55.3/36.4 (mask 30.9/51.8/32.1).

And chapter 05's single map vs feature pyramid, Lin et al. 2017, "Feature Pyramid
Networks", Table 3 (Faster R-CNN, RPN and detector on the same features, ResNet-50, COCO
minival box AP@0.5 / AP / APs / APm / APl in %):

- ``fpn_table3``: (a) C4 with a res5 head 53.1/31.6/13.2/35.6/47.1, (b) C5 with a 2-fc
  head 51.7/28.0/9.6/31.9/43.1, (c) FPN 56.9/33.9/17.8/37.7/45.8; plus our ``cpu``
  preset's single stride-8 map (chapters 03-04), which the paper did not run.

:data:`PAPER_METRIC` says, per table, what the paper's numbers beside the settings are, and
:data:`COMPARABLE_METRIC` which of ours to read beside them. Settings are labelled with
what actually ran (Table 8's rows with our anchor sizes, the paper's in brackets); a
chapter takes the labels from :func:`faster_rcnn_grid`, so a results file written before a
label changed still shows the right one.

Command (one results file per table)::

    python -m rcnn_steps.ablations faster-rcnn --table table8 --seeds 0 1 --preset cpu \\
        --out results/ablation_table8.json

(``faster-rcnn`` because every grid trains a box-only Faster R-CNN, the Mask R-CNN tables
included: they change its RoI layer, and no mask head is trained.)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rcnn_steps.faster_rcnn import PRESET_TRAINING, DetectorConfig

__all__ = [
    "COMPARABLE_METRIC",
    "METHODS",
    "PAPER_METRIC",
    "TABLES",
    "evaluate_detector",
    "faster_rcnn_grid",
    "load_datasets",
    "main",
    "read_grid_results",
    "run_grid",
    "run_key",
    "run_setting",
    "selective_search_proposals",
    "summarise",
    "timed_detections",
]

_VOC_MAP = "Faster R-CNN (VGG-16), PASCAL VOC 2007 test mAP at IoU 0.5, %"
#: What the papers' numbers beside each table's settings are (``results["paper_metric"]``).
PAPER_METRIC: dict[str, str] = {
    "table6": _VOC_MAP,
    "table8": _VOC_MAP,
    "table9": _VOC_MAP,
    "table2c": (
        "Mask R-CNN (ResNet-50-C4, stride 16), COCO minival MASK AP / AP50 / AP75, %; "
        "we measure box AP: the paper's box-level evidence is table2d"
    ),
    "table2d": (
        "Mask R-CNN (ResNet-50-C5, stride 32), COCO minival box AP / AP50 / AP75, % "
        "('paper'; mask AP / AP50 / AP75 in 'paper_mask')"
    ),
    "fpn_table3": (
        "FPN (Lin et al. 2017) Table 3: Faster R-CNN, ResNet-50, COCO minival box AP / "
        "AP@0.5 / APs / APm / APl, % ('paper'; Table 2, Fast R-CNN on fixed FPN "
        "proposals, in 'paper_table2')"
    ),
}

#: Our metric that sits beside each table's paper metric: Faster R-CNN's VOC tables report
#: mAP at IoU 0.5, which is our AP50; the Mask R-CNN and FPN tables report COCO AP (with
#: AP50 / AP75 or the sizes beside it), which is our AP.
COMPARABLE_METRIC: dict[str, str] = {
    "table6": "AP50",
    "table8": "AP50",
    "table9": "AP50",
    "table2c": "AP",
    "table2d": "AP",
    "fpn_table3": "AP",
}

#: The paper's anchor sizes (sqrt of the area, pixels on ~600 px images) and ours: the
#: paper's divided by 16 (see :func:`faster_rcnn_grid`).
PAPER_ANCHOR_SIZES = (128, 256, 512)
ANCHOR_SCALE = 1 / 16
OUR_ANCHOR_SIZES = tuple(int(s * ANCHOR_SCALE) for s in PAPER_ANCHOR_SIZES)  # (8, 16, 32)
_RATIOS_1 = (1.0,)
#: Training images of both Table 6 settings: the images chapter 02's proposal cache covers.
TABLE6_TRAIN_IMAGES = 400
_RATIOS_3 = (0.5, 1.0, 2.0)

TABLES = ("table6", "table8", "table9", "table2c", "table2d", "fpn_table3")

#: Anchor sizes of ``table2d`` (stride 32): the cpu preset's, see :func:`faster_rcnn_grid`.
TABLE2D_ANCHOR_SIZES = (8, 16, 32, 64)

#: FPN paper (Lin et al. 2017), ResNet-50, COCO minival, % (AP, AP50, APs, APm, APl):
#: Table 3 (Faster R-CNN, each detector's RPN on its own features) and Table 2 (Fast
#: R-CNN on the fixed proposals of the FPN RPN), rows (a) C4 + res5 head, (b) C5 + 2fc,
#: (c) FPN + 2fc. (c) is the same in both tables.
_FPN_METRICS = ("AP", "AP50", "APs", "APm", "APl")
_PAPER_FPN_T3 = {
    "c4": (31.6, 53.1, 13.2, 35.6, 47.1),
    "c5_2fc": (28.0, 51.7, 9.6, 31.9, 43.1),
    "fpn": (33.9, 56.9, 17.8, 37.7, 45.8),
}
_PAPER_FPN_T2 = {
    "c4": (31.9, 54.7, 15.7, 36.5, 45.5),
    "c5_2fc": (28.8, 52.9, 11.9, 32.4, 43.4),
    "fpn": (33.9, 56.9, 17.8, 37.7, 45.8),
}
#: Anchors of the single-map rows of ``fpn_table3``: the FPN paper's five scales 32..512
#: (its C4 and C5 baselines use them too), divided by 4 as ``cpu_fpn``'s P2..P6 anchors.
FPN_TABLE3_ANCHOR_SIZES = (8, 16, 32, 64, 128)

#: How a setting gets its proposals: its own RPN (Faster R-CNN) or selective search
#: (Fast R-CNN on chapter 02's cached proposals).
METHODS = ("rpn", "selective_search")

#: Metrics copied from each run into the summary.
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
#: The paper's numbers of the Mask R-CNN tables, (AP, AP50, AP75) in %.
_PAPER_2C = {
    "roipool": (26.9, 48.8, 26.4),
    "roiwarp_max": (27.2, 49.2, 27.1),
    "roiwarp_avg": (27.1, 48.9, 27.1),
    "roialign_max": (30.2, 51.0, 31.8),
    "roialign_avg": (30.3, 51.2, 31.5),
}
_PAPER_2D_BOX = {"roipool": (28.2, 52.7, 26.9), "roialign_avg": (34.0, 55.3, 36.4)}
_PAPER_2D_MASK = {"roipool": (23.6, 46.5, 21.6), "roialign_avg": (30.9, 51.8, 32.1)}
_ROI_LABELS = {
    "roipool": "RoIPool",
    "roiwarp_max": "RoIWarp, max",
    "roiwarp_avg": "RoIWarp, avg",
    "roialign_max": "RoIAlign, max",
    "roialign_avg": "RoIAlign, avg",
}
#: Per-run timings also summarised over the seeds.
SUMMARY_TIMINGS = ("seconds_per_image", "network_seconds_per_image", "wall_time_s")


def faster_rcnn_grid(table: str) -> dict[str, dict[str, Any]]:
    """The named settings of one Faster R-CNN paper table, in the paper's order:
    ``{name: {"overrides": {DetectorConfig field: value}, "paper": number, "label": str}}``.

    ``"table8"``, Table 8 of Ren et al. 2015 (anchors; VOC07 test mAP, VGG-16):

    ========================  =======================  ========  ==========================
    name                      paper anchors             paper     ours (sizes, ratios h/w)
    ========================  =======================  ========  ==========================
    ``1s1r_128``              128^2, 1:1               65.8      (8,), (1,)
    ``1s1r_256``              256^2, 1:1               66.7      (16,), (1,)
    ``1s3r_128``              128^2, {2:1, 1:1, 1:2}   68.8      (8,), (0.5, 1, 2)
    ``1s3r_256``              256^2, {2:1, 1:1, 1:2}   67.9      (16,), (0.5, 1, 2)
    ``3s1r``                  {128,256,512}^2, 1:1     69.8      (8, 16, 32), (1,)
    ``3s3r``                  {128,256,512}^2, 3 r.    69.9      (8, 16, 32), (0.5, 1, 2)
    ========================  =======================  ========  ==========================

    How the anchors are scaled: the paper's sizes are divided by 16, so 128/256/512 become
    8/16/32 pixels. Why not by the image ratio (600 -> 128 px, x0.21, giving 27/55/109):
    the synthetic set's objects are much smaller relative to the image than VOC's (sqrt
    area quartiles 9 / 17 / 33 px on 128 px images, 5th-95th percentile 5-52), so image
    scaling would put every anchor above three quarters of the objects and the largest at
    almost the whole image. What the table tests is how well the anchor set covers the
    objects' sizes and shapes; with /16 the three scales sit at the objects' quartiles
    (8, 16, 32), as the paper's three span VOC's objects, one scale covers only part of
    them as in the paper, and 8 px is one cell of the stride-8 feature map of the ``cpu``
    preset (``feature_stage="c3"``): the smallest anchor that still tiles the map
    without gaps. The scales stay an octave apart and the ratios are the paper's. The
    RPN loss is left at the preset's (lambda 1, torchvision normalisation); the paper ran
    Table 8 with lambda 10 and its normalisation, which ``table9`` covers.

    ``"table6"``, Table 6's question (the rows "SS 2000" and "RPN+VGG, shared 300" of
    Tables 3 and 6, VOC07 test mAP 66.9 and 69.9): does a detector do as well with 300
    proposals from its own RPN as with ~2000 from selective search? ``ss_2000`` trains
    :class:`~rcnn_steps.fast_rcnn.FastRCNN` on the selective-search proposals chapter 02
    cached (``python -m rcnn_steps.rcnn proposals``; the fast mode returns ~590 per
    128 px image, all kept, up to 2000); ``rpn_300`` trains the whole Faster R-CNN and
    tests on its 300 best proposals. Everything else is equal: the preset's detector
    (backbone, RoI layer, head, RoI sampling), schedule and batch, and the training
    images: the first :data:`TABLE6_TRAIN_IMAGES` (those the proposal cache covers).
    Each run also records the proposals' and the network's seconds per image.

    ``"table9"``, Table 9 (lambda of eq. 1, with ``rpn_normalization="paper"``: the
    classification term averaged over the sampled anchors, the box term over the anchor
    locations, lambda 10 balancing the two; VOC07 test mAP, VGG-16): ``lambda_0.1`` 67.2,
    ``lambda_1`` 68.9, ``lambda_10`` 69.9, ``lambda_100`` 69.1. The anchors are the
    preset's.

    The Mask R-CNN tables (He et al. 2017) give ``"paper"`` as ``{"AP", "AP50", "AP75"}``
    in %, because the paper reports all three and AP75, the strict-localisation metric,
    is where RoIAlign's gain is largest:

    ``"table2c"``, Table 2(c) (RoI layer; ResNet-50-C4 at stride 16, COCO minival mask
    AP): the preset's detector with ``roi_op`` set to each row (``roipool`` 26.9/48.8/26.4,
    ``roiwarp_max`` 27.2/49.2/27.1, ``roiwarp_avg`` 27.1/48.9/27.1, ``roialign_max``
    30.2/51.0/31.8, ``roialign_avg`` 30.3/51.2/31.5), all on the ``cpu`` preset's single
    stride-8 map (``feature_stage="c3"``), 7 x 7 bins, 2 x 2 sampling points per bin (the
    paper's "four regular locations"). The paper's numbers are mask AP and we measure box
    AP (no mask head is trained): the direction, not the size, is what can carry over;
    ``table2d`` has the paper's box-level numbers. ``aligned`` stays False in the five
    rows: the paper's RoIAlign (Detectron) had no half-pixel shift; Detectron2's
    correction (``roi_aligned=True``, torchvision's ``aligned=True``) is a sixth row,
    ``roialign_avg_aligned``, with no paper number (``"paper": None``).

    ``"table2d"``, Table 2(d) (stride 32, ResNet-50-C5; box AP beside the paper's box
    numbers, ``"paper_mask"`` holds its mask AP): ``roipool`` 28.2/52.7/26.9 vs
    ``roialign_avg`` 34.0/55.3/36.4, with ``feature_stage="c5"``: a 4 x 4 map on 128 px
    images, where a median object (16 px) is half a cell, so RoIPool's rounding moves a
    box by up to 16 px. The RPN reads the same map. Its anchors stay the preset's
    (:data:`TABLE2D_ANCHOR_SIZES`, 8-64 px, 3 ratios): at stride 32 the anchor *spacing*
    is what limits how well they cover the synthetic set's objects, not their sizes
    (measured on the first 500 train images, 1503 objects: an anchor at IoU >= 0.5 for
    13% of the objects with sizes (8, 16, 32, 64), (16, 32, 64) or (16, 32, 64, 128),
    12% with (24, 48, 96), 11% with (32, 64, 128); 64% with the preset's at stride 8), so
    no other set does better, and keeping them changes only the stride between the two
    tables. The RPN's weak proposals are the same for both rows (and the ground-truth
    boxes join the proposals in training), so the comparison is still of the RoI layer.

    ``"fpn_table3"``, Table 3 of the FPN paper (Lin et al. 2017; Faster R-CNN whose RPN
    and detector read the same features; ``"paper"`` is ``{"AP", "AP50", "APs", "APm",
    "APl"}`` in %, ``"paper_table2"`` the same rows of Table 2, Fast R-CNN on the FPN
    RPN's fixed proposals). Every row keeps the grid preset's schedule, batch, RPN and RoI
    sampling, RoIPool at 7 x 7 and fc width: only the features and the head change ("the
    same budget" is the same schedule, not the same arithmetic):

    - ``c4``, row (a) 31.6/53.1/13.2/35.6/47.1: the C4 design (He et al. 2016): the RPN
      and RoI pooling on c4 (stride 16, an 8 x 8 map on 128 px images) and the
      backbone's res5 stage run on every pooled RoI as the head (``box_head="c5"``,
      :class:`~rcnn_steps.roi_heads.C5BoxHead`: res5, whose first conv has stride 2,
      then a global average). Pooled 7 x 7, not the paper's 14 x 14: the paper pools
      14 x 14 so that its canonical 224 px RoI gets one bin per stride-16 cell; our
      objects span one or two cells at stride 16 (median sqrt(area) 16 px, canonical
      RoI 56 px = 3.5 cells), so 7 x 7 RoIPool bins already repeat each cell several
      times and 14 x 14 would add no information for 4x the cost of res5 on 64 RoIs per
      image, already the dearest part of the model; 7 x 7 is also every other row's
      pooled size. Anchors :data:`FPN_TABLE3_ANCHOR_SIZES` (8..128 px, 3 ratios, all on
      the one map): the paper's 32..512, which its C4 and C5 baselines share with FPN
      (section 5.2.2), divided by 4 as ``cpu_fpn``'s P2..P6 anchors. At stride 16 the
      anchors' spacing, not their sizes, limits how many objects they reach: of the 634
      val objects, 39% have an anchor at IoU >= 0.5 with these sizes or with (8, 16, 32,
      64), 37% with (16, 32, 64) (7% at IoU >= 0.7), against 66% for the ``cpu`` preset
      at stride 8 and 72% for ``cpu_fpn``'s pyramid.
    - ``c5_2fc``, row (b) 28.0/51.7/9.6/31.9/43.1: the RPN and RoI pooling on c5
      (stride 32, 4 x 4) with the 2-fc head (fc6/fc7 on 256 x 7 x 7), the same anchors
      (an anchor at IoU >= 0.5 for 12% of the val objects).
    - ``fpn``, row (c) 33.9/56.9/17.8/37.7/45.8: ``fpn=True`` on the grid's preset, which
      on ``cpu`` *is* the ``cpu_fpn`` preset (equal configs, tests/test_ablations.py):
      the RPN on P2..P6 with one anchor size per level, RoIs pooled from P2..P5 by FPN
      eq. (1), the 2-fc head on 64 x 7 x 7.
    - ``c3_2fc``, not in the paper (``"paper": None``): the ``cpu`` preset unchanged,
      the detector of chapters 03-04: RPN and RoI pooling on one stride-8 map (c3),
      anchors 8..64 px, the 2-fc head. At our scale it, not C4, is the strong single
      map (a finer map, as the paper's C4 is finer than its C5), so the pyramid is
      tested against it too.
    """
    if table == "fpn_table3":
        paper_rows = {
            "c4": (
                {"feature_stage": "c4", "box_head": "c5", "anchor_sizes": FPN_TABLE3_ANCHOR_SIZES},
                "(a) C4 (stride 16), res5 head",
            ),
            "c5_2fc": (
                {"feature_stage": "c5", "anchor_sizes": FPN_TABLE3_ANCHOR_SIZES},
                "(b) C5 (stride 32), 2-fc head",
            ),
            "fpn": ({"fpn": True}, "(c) FPN P2-P6, 2-fc head"),
        }
        grid3: dict[str, dict[str, Any]] = {
            name: {
                "overrides": overrides,
                "paper": dict(zip(_FPN_METRICS, _PAPER_FPN_T3[name], strict=True)),
                "paper_table2": dict(zip(_FPN_METRICS, _PAPER_FPN_T2[name], strict=True)),
                "label": label,
            }
            for name, (overrides, label) in paper_rows.items()
        }
        grid3["c3_2fc"] = {
            "overrides": {"feature_stage": "c3"},
            "paper": None,
            "paper_table2": None,
            "label": "C3 (stride 8), 2-fc head: chapters 03-04 (not in the paper)",
        }
        return grid3
    if table == "table8":
        # Labelled with what ran (our sizes), the paper's beside them.
        s128, s256 = OUR_ANCHOR_SIZES[:2]
        three = "/".join(str(s) for s in OUR_ANCHOR_SIZES)
        rows = [
            ("1s1r_128", (s128,), _RATIOS_1, 65.8, f"1 scale, {s128} px (paper 128^2), 1 ratio"),
            ("1s1r_256", (s256,), _RATIOS_1, 66.7, f"1 scale, {s256} px (paper 256^2), 1 ratio"),
            ("1s3r_128", (s128,), _RATIOS_3, 68.8, f"1 scale, {s128} px (paper 128^2), 3 ratios"),
            ("1s3r_256", (s256,), _RATIOS_3, 67.9, f"1 scale, {s256} px (paper 256^2), 3 ratios"),
            ("3s1r", OUR_ANCHOR_SIZES, _RATIOS_1, 69.8, f"3 scales, {three} px, 1 ratio"),
            ("3s3r", OUR_ANCHOR_SIZES, _RATIOS_3, 69.9, f"3 scales, {three} px, 3 ratios"),
        ]
        return {
            name: {
                "overrides": {"anchor_sizes": sizes, "anchor_aspect_ratios": ratios},
                "paper": paper,
                "label": label,
            }
            for name, sizes, ratios, paper, label in rows
        }
    if table == "table9":
        rows9 = [(0.1, 67.2), (1.0, 68.9), (10.0, 69.9), (100.0, 69.1)]
        return {
            f"lambda_{lam:g}": {
                "overrides": {"rpn_lambda": lam, "rpn_normalization": "paper"},
                "paper": paper,
                "label": f"lambda = {lam:g}",
            }
            for lam, paper in rows9
        }
    if table == "table6":
        return {
            "ss_2000": {
                "method": "selective_search",
                "overrides": {},
                "num_train_images": TABLE6_TRAIN_IMAGES,
                "paper": 66.9,
                "label": "selective search, up to 2000 proposals (Fast R-CNN)",
            },
            "rpn_300": {
                "method": "rpn",
                "overrides": {"rpn_post_nms_top_n_test": 300},
                "num_train_images": TABLE6_TRAIN_IMAGES,
                "paper": 69.9,
                "label": "RPN, 300 proposals (Faster R-CNN, shared features)",
            },
        }
    if table == "table2c":
        grid2c = {
            op: {
                "overrides": {"roi_op": op},
                "paper": _ap_triple(paper),
                "label": _ROI_LABELS[op],
            }
            for op, paper in _PAPER_2C.items()
        }
        grid2c["roialign_avg_aligned"] = {
            "overrides": {"roi_op": "roialign_avg", "roi_aligned": True},
            "paper": None,
            "label": "RoIAlign, avg, aligned (half-pixel shift; not in the paper)",
        }
        return grid2c
    if table == "table2d":
        return {
            op: {
                "overrides": {
                    "roi_op": op,
                    "feature_stage": "c5",
                    "anchor_sizes": TABLE2D_ANCHOR_SIZES,
                },
                "paper": _ap_triple(_PAPER_2D_BOX[op]),
                "paper_mask": _ap_triple(_PAPER_2D_MASK[op]),
                "label": f"{_ROI_LABELS[op]}, stride 32 (c5)",
            }
            for op in ("roipool", "roialign_avg")
        }
    raise ValueError(f"faster_rcnn_grid: unknown table {table!r}; one of {list(TABLES)}.")


def read_grid_results(table: str, path: str | Path | None = None) -> dict[str, Any]:
    """A grid's results file (default ``results/ablation_<table>.json``) with what a
    chapter needs to show it, the settings' order, labels and paper numbers taken from
    :func:`faster_rcnn_grid` (so a label that changed after the run reads as it is now):

    ``{"table", "order", "labels", "paper", "paper_metric", "metric" (ours beside the
    paper's, :data:`COMPARABLE_METRIC`), "summary", "runs", "settings", "preset",
    "max_iter", "provenance"}``. A file of another table is an error.
    """
    from rcnn_steps.utils import read_results, results_dir

    path = Path(path) if path is not None else results_dir() / f"ablation_{table}.json"
    grid = faster_rcnn_grid(table)
    payload = read_results(path)
    results = payload["results"]
    if results.get("table") != table:
        raise ValueError(
            f"{path} holds the grid {results.get('table')!r}, not {table!r}; pass the file "
            f"that `python -m rcnn_steps.ablations faster-rcnn --table {table}` wrote"
        )
    return {
        "table": table,
        "order": list(grid),
        "labels": {name: setting["label"] for name, setting in grid.items()},
        "paper": {name: setting["paper"] for name, setting in grid.items()},
        "paper_metric": PAPER_METRIC[table],
        "metric": COMPARABLE_METRIC[table],
        "summary": results["summary"],
        "runs": results["runs"],
        "settings": grid,
        "preset": results["preset"],
        "max_iter": results["max_iter"],
        "provenance": payload["provenance"],
    }


def _ap_triple(values: tuple[float, float, float]) -> dict[str, float]:
    return dict(zip(("AP", "AP50", "AP75"), values, strict=True))


def detector_config(preset: str, overrides: dict[str, Any]) -> DetectorConfig:
    """The preset's :class:`DetectorConfig` (``ci``, ``cpu``, ``cpu_fpn`` or ``gpu``) with
    ``overrides``."""
    presets = {
        "ci": DetectorConfig.ci,
        "cpu": DetectorConfig.cpu,
        "cpu_fpn": DetectorConfig.cpu_fpn,
        "gpu": DetectorConfig.gpu,
    }
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; one of {sorted(presets)}.")
    return presets[preset](**overrides)


def schedule(preset: str, max_iter: int | None = None) -> dict[str, Any]:
    """The preset's training schedule (:data:`~rcnn_steps.faster_rcnn.PRESET_TRAINING`),
    shortened to ``max_iter`` when given: the learning-rate milestones scale with it (the
    ``cpu`` preset's drop at 1200 of 1500 becomes 480 of 600) and the warm-up is capped at
    half the run, so a short run keeps the schedule's shape."""
    base = dict(PRESET_TRAINING[preset])
    if max_iter is None or max_iter == base["max_iter"]:
        return base
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    factor = max_iter / base["max_iter"]
    steps = tuple(s for s in (round(s * factor) for s in base.get("lr_steps", ())) if s > 0)
    return dict(
        base,
        max_iter=max_iter,
        lr_steps=steps,
        warmup_steps=min(base.get("warmup_steps", 0), max_iter // 2),
        log_every=min(base.get("log_every", 20), max_iter),
    )


def load_datasets(root: str | Path | None = None):
    """The synthetic (train, val) sets, box-only (``load_masks=False``): ``root`` is a
    folder written by :func:`rcnn_steps.data.generate`, default the book's set (generated
    first if missing)."""
    from rcnn_steps.data import CocoDataset, ensure_synth

    root = Path(root) if root is not None else ensure_synth()
    return tuple(
        CocoDataset(
            root / split, root / "annotations" / f"instances_{split}.json", load_masks=False
        )
        for split in ("train", "val")
    )


@torch.no_grad()
def timed_detections(
    model, dataset, image_ids: Sequence[int], proposals: dict[int, torch.Tensor] | None = None
) -> tuple[list[dict[str, Any]], float]:
    """Run ``model`` in eval mode on ``image_ids`` of ``dataset``, one image at a time as
    at test time: ``(COCO-format detections, mean seconds per image)``. The time covers
    the network only (preprocessing, backbone, RPN or RoI heads, NMS), not image loading.
    ``proposals`` (``{image_id: (P, 4)}``) are passed to a
    :class:`~rcnn_steps.fast_rcnn.FastRCNN`; a Faster R-CNN makes its own."""
    from rcnn_steps.evaluation import detections_to_coco

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    seconds: list[float] = []
    for image_id in image_ids:
        image = dataset.load_image(image_id).to(device)
        if proposals is None:
            t0 = time.perf_counter()
            det = model([image])[0]
        else:
            boxes = proposals[int(image_id)].to(device)
            t0 = time.perf_counter()
            det = model([image], [boxes])[0]
        seconds.append(time.perf_counter() - t0)
        results += detections_to_coco(
            image_id, det["boxes"], det["scores"], det["labels"], dataset.label_to_category_id
        )
    model.train(was_training)
    return results, sum(seconds) / max(len(seconds), 1)


def evaluate_detector(
    model, dataset, image_ids: Sequence[int], proposals: dict[int, torch.Tensor] | None = None
) -> dict[str, float]:
    """COCO box AP of ``model`` on ``image_ids`` of ``dataset`` (one image at a time)."""
    from rcnn_steps.evaluation import coco_evaluate, subset_ground_truth

    results, _ = timed_detections(model, dataset, image_ids, proposals)
    return coco_evaluate(subset_ground_truth(dataset.coco, image_ids), results)


def selective_search_proposals(
    dataset, split: str, num_images: int, root: str | Path | None = None
) -> tuple[dict[int, torch.Tensor], float]:
    """Selective-search proposals for the first ``num_images`` images of ``dataset``:
    ``({image_id: (P, 4)}, seconds per image it took)``.

    For the book's set (``root`` None) they are chapter 02's cache
    (``results/proposals_fast_<split>.npz``, made by ``python -m rcnn_steps.rcnn
    proposals``; a missing or stale cache is an error that names that command). For any
    other ``root`` they are made on first use and cached beside the data.
    """
    import numpy as np

    from rcnn_steps.rcnn import load_proposals, make_proposals, proposals_path

    if root is None:
        path = proposals_path(split)
    else:
        path = Path(root) / f"proposals_fast_{split}.npz"
        stale = False
        if path.exists():
            with np.load(path) as data:
                stale = str(data["fingerprint"]) != dataset.fingerprint
        if not path.exists() or stale:
            make_proposals(dataset, num_images, path)
    proposals = load_proposals(path, dataset)
    with np.load(path) as data:
        seconds = float(np.mean(data["seconds"])) if len(data["seconds"]) else 0.0
    wanted = [int(i) for i in dataset.image_ids[:num_images]]
    missing = [i for i in wanted if i not in proposals]
    if missing:
        raise ValueError(
            f"{path} has no proposals for {len(missing)} of the first {num_images} {split} "
            f"images (e.g. {missing[:3]}); remake it with `python -m rcnn_steps.rcnn "
            f"proposals --split {split} --num-images {num_images}`"
        )
    return {i: proposals[i] for i in wanted}, seconds


def run_setting(
    name: str,
    overrides: dict[str, Any],
    seed: int,
    preset: str,
    max_iter: int | None = None,
    *,
    method: str = "rpn",
    num_train_images: int | None = None,
    root: str | Path | None = None,
    batch_size: int = 8,
    num_eval_images: int | None = None,
    device: str = "auto",
    progress: bool = False,
    timing_threads: int | None = None,
) -> dict[str, Any]:
    """Train one detector (``preset``'s config with ``overrides``, seeded by ``seed``) on
    the synthetic train set through :func:`rcnn_steps.engine.train`, and evaluate its
    COCO box AP on :func:`~rcnn_steps.evolution.evaluation_image_ids` of the val set.

    ``method="rpn"`` trains a :class:`~rcnn_steps.faster_rcnn.FasterRCNN` (its own
    proposals); ``method="selective_search"`` a :class:`~rcnn_steps.fast_rcnn.FastRCNN`
    with the same config on selective-search proposals
    (:func:`selective_search_proposals`), no flips in either. ``num_train_images``
    restricts training to the first images of the train set (default: all).
    ``timing_threads`` sets torch's CPU thread count while the val images are detected
    and timed (default: unchanged), so timings compare with chapter 02-03's 1-thread ones.

    Returns a JSON-able dict: ``name, seed, preset, method, max_iter, overrides,
    metrics`` (rounded to 4 digits), ``num_train_images, num_eval_images,
    network_seconds_per_image, proposal_seconds_per_image`` (selective search's, from
    the cache; 0 for the RPN, whose cost is inside the network's), ``seconds_per_image``,
    ``wall_time_s`` (training and evaluation), ``train_seconds, eval_seconds`` and the
    :meth:`~rcnn_steps.engine.TrainResult.summary` fields.
    """
    from rcnn_steps.data import collate_fn
    from rcnn_steps.engine import TrainConfig, train
    from rcnn_steps.evaluation import coco_evaluate, subset_ground_truth
    from rcnn_steps.evolution import NUM_EVAL_IMAGES, evaluation_image_ids
    from rcnn_steps.faster_rcnn import FasterRCNN
    from rcnn_steps.utils import seed_everything

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {list(METHODS)}.")
    t0 = time.perf_counter()
    config = detector_config(preset, overrides)
    train_set, val_set = load_datasets(root)
    n_train = len(train_set) if num_train_images is None else min(num_train_images, len(train_set))
    eval_ids = evaluation_image_ids(val_set, num_eval_images or NUM_EVAL_IMAGES)
    train_cfg = TrainConfig(
        **schedule(preset, max_iter), seed=seed, device=device, progress=progress
    )
    seed_everything(seed)
    if method == "rpn":
        model = FasterRCNN(config)
        data = torch.utils.data.Subset(train_set, range(n_train))
        loader = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=True, collate_fn=collate_fn
        )
        result = train(model, loader, train_cfg)
        val_proposals, proposal_seconds = None, 0.0
    else:
        from rcnn_steps.fast_rcnn import (
            FastRCNN,
            ProposalDataset,
            collate_proposals,
            proposal_detection_loss,
        )

        train_props, _ = selective_search_proposals(train_set, "train", n_train, root)
        val_proposals, proposal_seconds = selective_search_proposals(
            val_set, "val", len(eval_ids), root
        )
        model = FastRCNN(config)
        data = ProposalDataset(train_set, train_props, flip=False)
        loader = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=True, collate_fn=collate_proposals
        )
        result = train(model, loader, train_cfg, loss_fn=proposal_detection_loss)
    t1 = time.perf_counter()
    threads = torch.get_num_threads()
    if timing_threads is not None:
        torch.set_num_threads(timing_threads)
    try:
        detections, network_seconds = timed_detections(model, val_set, eval_ids, val_proposals)
    finally:
        torch.set_num_threads(threads)
    metrics = coco_evaluate(subset_ground_truth(val_set.coco, eval_ids), detections)
    t2 = time.perf_counter()
    return {
        "name": name,
        "seed": int(seed),
        "preset": preset,
        "method": method,
        "max_iter": train_cfg.max_iter,
        "overrides": json.loads(json.dumps(overrides)),
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        "num_train_images": n_train,
        "num_eval_images": len(eval_ids),
        "network_seconds_per_image": round(network_seconds, 4),
        "proposal_seconds_per_image": round(proposal_seconds, 4),
        "seconds_per_image": round(network_seconds + proposal_seconds, 4),
        "timing_threads": timing_threads or threads,
        "wall_time_s": round(t2 - t0, 2),
        "train_seconds": round(t1 - t0, 2),
        "eval_seconds": round(t2 - t1, 2),
        **result.summary(),
    }


def run_key(name: str, seed: int) -> str:
    """The key of one run in a results file: ``"<setting>/seed<seed>"``."""
    return f"{name}/seed{int(seed)}"


def _spread(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {
        "mean": round(mean, 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "std": round(std, 4),
    }


def summarise(
    grid: dict[str, dict[str, Any]], runs: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per setting of ``grid``, over the seeds run so far: ``{"paper", "label", "seeds",
    "n", metric: {"mean", "min", "max", "std"}}`` for :data:`SUMMARY_METRICS` and
    ``wall_time_s``. ``std`` is the sample standard deviation (0 for one seed)."""
    summary: dict[str, dict[str, Any]] = {}
    for name, setting in grid.items():
        done = sorted((r for r in runs.values() if r["name"] == name), key=lambda r: r["seed"])
        entry: dict[str, Any] = {
            "paper": setting["paper"],
            "label": setting["label"],
            "seeds": [r["seed"] for r in done],
            "n": len(done),
        }
        if done:
            for metric in SUMMARY_METRICS:
                values = [r["metrics"][metric] for r in done if metric in r["metrics"]]
                if values:
                    entry[metric] = _spread(values)
            for timing in SUMMARY_TIMINGS:
                values = [r[timing] for r in done if timing in r]
                if values:
                    entry[timing] = _spread(values)
        summary[name] = entry
    return summary


def run_grid(
    table: str,
    seeds: Sequence[int],
    preset: str,
    out: str | Path,
    max_iter: int | None = None,
    *,
    settings: Sequence[str] | None = None,
    root: str | Path | None = None,
    num_eval_images: int | None = None,
    device: str = "auto",
    progress: bool = False,
    verbose: bool = True,
    timing_threads: int | None = None,
) -> dict[str, Any]:
    """Run every (setting, seed) of ``table`` with :func:`run_setting`, writing the
    results file ``out`` after each run (atomically, with :func:`rcnn_steps.utils.
    write_results`'s provenance) and skipping the runs it already holds, so an interrupted
    grid resumes where it stopped. ``settings`` restricts the grid to some names;
    ``timing_threads`` is passed to every :func:`run_setting` (threads while the val
    images are timed).

    The file's ``results`` hold ``table, preset, max_iter, paper_metric, settings`` (the
    grid), ``runs`` (``{run_key(name, seed): run}``) and ``summary`` (:func:`summarise`).
    A file made with another table, preset or ``max_iter`` is refused rather than mixed.
    Returns the ``results`` dict.
    """
    from rcnn_steps.utils import read_results, write_results

    started = time.time()
    grid = faster_rcnn_grid(table)
    if settings is not None:
        unknown = sorted(set(settings) - set(grid))
        if unknown:
            raise ValueError(f"unknown settings {unknown} for {table}; one of {list(grid)}")
        grid = {k: v for k, v in grid.items() if k in set(settings)}
    iters = schedule(preset, max_iter)["max_iter"]
    out = Path(out)
    runs: dict[str, dict[str, Any]] = {}
    earlier_seeds: list[int] = []
    if out.exists():
        old = read_results(out)
        held = old["results"]
        for key, want in (("table", table), ("preset", preset), ("max_iter", iters)):
            if held.get(key) != want:
                raise ValueError(
                    f"{out} holds runs with {key}={held.get(key)!r}, not {want!r}: pass "
                    "another --out (or delete the file) rather than mix the two grids"
                )
        runs = dict(held.get("runs", {}))
        earlier_seeds = list(old["provenance"].get("seeds") or [])
    all_seeds = sorted({*earlier_seeds, *(int(s) for s in seeds)})
    full_grid = faster_rcnn_grid(table)

    def results() -> dict[str, Any]:
        return {
            "table": table,
            "preset": preset,
            "max_iter": iters,
            "paper_metric": PAPER_METRIC[table],
            "settings": json.loads(json.dumps(full_grid)),
            "runs": dict(sorted(runs.items())),
            "summary": summarise(full_grid, runs),
        }

    todo = [(name, int(seed)) for name in grid for seed in seeds]
    for i, (name, seed) in enumerate(todo, 1):
        key = run_key(name, seed)
        if key in runs:
            if verbose:
                print(f"[{i}/{len(todo)}] {key}: already in {out}, skipped", flush=True)
            continue
        run = run_setting(
            name,
            grid[name]["overrides"],
            seed,
            preset,
            max_iter,
            method=grid[name].get("method", "rpn"),
            num_train_images=grid[name].get("num_train_images"),
            root=root,
            num_eval_images=num_eval_images,
            device=device,
            progress=progress,
            timing_threads=timing_threads,
        )
        runs[key] = run
        write_results(out, results(), preset=preset, seeds=all_seeds, started=started)
        if verbose:
            m = run["metrics"]
            print(
                f"[{i}/{len(todo)}] {key}: AP {m['AP']:.3f} AP50 {m['AP50']:.3f} "
                f"in {run['wall_time_s']:.0f} s (paper {_paper_text(grid[name]['paper'])})",
                flush=True,  # a grid runs for an hour: show progress in a redirected log
            )
    final = results()
    write_results(out, final, preset=preset, seeds=all_seeds, started=started)
    return final


def _paper_text(paper: Any) -> str:
    """A setting's paper number(s) for printing: ``69.9``, ``30.3/51.2/31.5`` or ``-``."""
    if paper is None:
        return "-"
    if isinstance(paper, dict):
        return "/".join(f"{v:.1f}" for v in paper.values())
    return f"{paper:g}"


def _print_summary(results: dict[str, Any]) -> None:
    print(f"{results['table']} ({results['preset']}, {results['max_iter']} iterations)")
    print(f"  paper: {PAPER_METRIC.get(results['table'], '')}")
    names = max([12, *(len(n) for n in results["summary"])])
    papers = max([6, *(len(_paper_text(s["paper"])) for s in results["summary"].values())])
    print(
        f"  {'setting':<{names}} {'paper':>{papers}}  {'AP mean [min, max] std':<30} "
        "AP50 mean  AP75 mean  s/image  n"
    )
    for name, s in results["summary"].items():
        paper = _paper_text(s["paper"])
        if not s["n"]:
            print(f"  {name:<{names}} {paper:>{papers}}  (not run)")
            continue
        ap, ap50, ap75 = s["AP"], s["AP50"], s.get("AP75", {"mean": float("nan")})
        spread = f"{ap['mean']:.3f} [{ap['min']:.3f}, {ap['max']:.3f}] {ap['std']:.3f}"
        sec = s.get("seconds_per_image", {}).get("mean", float("nan"))
        print(
            f"  {name:<{names}} {paper:>{papers}}  {spread:<30} {ap50['mean']:.3f}      "
            f"{ap75['mean']:.3f}      {sec:.4f}   {s['n']}"
        )


def _faster_rcnn_command(args) -> int:
    from rcnn_steps.utils import set_threads

    set_threads(args.threads)
    results = run_grid(
        args.table,
        args.seeds,
        args.preset,
        args.out,
        args.max_iter,
        settings=args.settings,
        num_eval_images=args.num_eval_images,
        progress=args.progress,
        timing_threads=args.timing_threads,
    )
    _print_summary(results)
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rcnn_steps.ablations")
    sub = parser.add_subparsers(dest="command", required=True)
    fr = sub.add_parser(
        "faster-rcnn",
        help=(
            "Faster R-CNN Table 6 (proposals), 8 (anchors) or 9 (lambda), or Mask R-CNN "
            "Table 2(c)/(d) (RoI layer, box AP), or FPN Table 3 (C4 vs FPN) grid"
        ),
    )
    fr.add_argument("--table", choices=TABLES, required=True)
    fr.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    fr.add_argument("--preset", choices=("ci", "cpu"), default="cpu")
    fr.add_argument("--max-iter", type=int, default=None, help="default: the preset's")
    fr.add_argument(
        "--settings", nargs="+", default=None, help="run only these settings of the table"
    )
    fr.add_argument(
        "--num-eval-images", type=int, default=None, help="default: the evolution table's 50"
    )
    fr.add_argument("--out", type=Path, default=None, help="default results/ablation_<table>.json")
    fr.add_argument("--threads", type=int, default=2)
    fr.add_argument(
        "--timing-threads",
        type=int,
        default=None,
        help="threads while the val images are timed (default --threads)",
    )
    fr.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.out is None:
        from rcnn_steps.utils import results_dir

        args.out = results_dir() / f"ablation_{args.table}.json"
    return _faster_rcnn_command(args)


if __name__ == "__main__":
    sys.exit(main())
