"""The papers' ablation tables as data: each table's settings (overrides of
:class:`~rcnn_steps.detectors.config.DetectorConfig`) in the paper's order, the paper's
numbers beside them, their labels (what actually ran), what the paper measured
(:data:`PAPER_METRIC`) and which of our metrics sits beside it
(:data:`COMPARABLE_METRIC`). Nothing here trains or reads a file:
:mod:`rcnn_steps.experiments.ablations` runs the tables as grids and reads their results.

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

Mask R-CNN's own tables (He et al. 2017, chapter 08: backbone, mask loss, RoI layer,
stride, mask head, multi-task, keypoints, and the final model's budget) are
:data:`MASK_TABLES`, overrides of the ``cpu_mask`` preset (:func:`mask_rcnn_grid`).
:func:`table_grid` gives any table's settings and :func:`table_preset` the preset they
override.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ALL_TABLES",
    "ANCHOR_SCALE",
    "COMPARABLE_METRIC",
    "FINAL_OVERRIDES",
    "FPN_TABLE3_ANCHOR_SIZES",
    "KEYPOINT_LOSS_WEIGHT",
    "LONG_MAX_ITER",
    "MASK_BASE",
    "MASK_TABLES",
    "MASK_TABLE_METRIC",
    "OUR_ANCHOR_SIZES",
    "PAPER_ANCHOR_SIZES",
    "PAPER_METRIC",
    "TABLE2D_ANCHOR_SIZES",
    "TABLE6_TRAIN_IMAGES",
    "TABLES",
    "faster_rcnn_grid",
    "mask_rcnn_grid",
    "table_grid",
    "table_preset",
]

#: The tables of chapters 04-06 (:func:`faster_rcnn_grid`): Faster R-CNN's, FPN's Table 3
#: and Mask R-CNN's two RoI-layer tables, each on a box-only Faster R-CNN.
TABLES = ("table6", "table8", "table9", "table2c", "table2d", "fpn_table3")
#: Mask R-CNN's own tables (chapter 08, :func:`mask_rcnn_grid`), on the ``cpu_mask`` preset.
MASK_TABLES = (
    "mrcnn_2a",
    "mrcnn_2b",
    "mrcnn_2c",
    "mrcnn_2d",
    "mrcnn_2e",
    "mrcnn_3",
    "mrcnn_5",
    "mrcnn_6",
    "mrcnn_pixels",
    "mrcnn_long",
    "mrcnn_kp_weight",
)
ALL_TABLES = TABLES + MASK_TABLES

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
    "mrcnn_2a": "Mask R-CNN Table 2(a) (backbone), COCO minival mask AP / AP50 / AP75, %",
    "mrcnn_2b": "Mask R-CNN Table 2(b) (ResNet-50-C4), COCO minival mask AP / AP50 / AP75, %",
    "mrcnn_2c": "Mask R-CNN Table 2(c) (ResNet-50-C4), COCO minival mask AP / AP50 / AP75, %",
    "mrcnn_2d": (
        "Mask R-CNN Table 2(d) (ResNet-50-C5, stride 32), COCO minival mask AP / AP50 / "
        "AP75, % ('paper'; box AP / AP50 / AP75 in 'paper_box')"
    ),
    "mrcnn_2e": "Mask R-CNN Table 2(e) (ResNet-50-FPN), COCO minival mask AP / AP50 / AP75, %",
    "mrcnn_3": "Mask R-CNN Table 3 (ResNet-101-FPN), COCO test-dev box AP, %",
    "mrcnn_5": "Mask R-CNN Table 5 (ResNet-50-FPN), COCO minival person keypoint AP, %",
    "mrcnn_6": "Mask R-CNN Table 6 (ResNet-50-FPN), COCO minival person keypoint AP, %",
    "mrcnn_pixels": "not in the paper: the pixel convention of mask targets and pasting",
    "mrcnn_long": (
        "Mask R-CNN Tables 2(a) (backbone), 2(b) and 2(c) (ResNet-50-C4), COCO minival mask "
        "AP / AP50 / AP75, %"
    ),
    "mrcnn_kp_weight": (
        "not in the paper (which weights every loss 1): the keypoint loss weight of the "
        "keypoint-only model, keypoint AP"
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
    **{t: "AP" for t in MASK_TABLES},
}

#: Our metric beside each Mask R-CNN table's paper numbers (``segm``: mask AP, ``bbox``:
#: box AP, ``keypoints``: keypoint AP), as :func:`rcnn_steps.experiments.runner.evaluate`
#: names them.
MASK_TABLE_METRIC = {
    "mrcnn_2a": "segm",
    "mrcnn_2b": "segm",
    "mrcnn_2c": "segm",
    "mrcnn_2d": "segm",
    "mrcnn_2e": "segm",
    "mrcnn_3": "bbox",
    "mrcnn_5": "keypoints",
    "mrcnn_6": "keypoints",
    "mrcnn_pixels": "segm",
    "mrcnn_long": "segm",
    "mrcnn_kp_weight": "keypoints",
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
    :class:`~rcnn_steps.detectors.fast_rcnn.FastRCNN` on the selective-search proposals chapter 02
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
      :class:`~rcnn_steps.modeling.roi_heads.C5BoxHead`: res5, whose first conv has stride 2,
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


def _ap_triple(values: tuple[float, float, float]) -> dict[str, float]:
    """A paper's (AP, AP50, AP75) as ``{"AP": .., "AP50": .., "AP75": ..}``."""
    return dict(zip(("AP", "AP50", "AP75"), values, strict=True))


# ----------------------------------------------------------------------------------------
# Mask R-CNN's own tables (chapter 08): masks and keypoints

#: The Mask R-CNN paper's numbers (COCO minival, %): (AP, AP50, AP75) of masks unless said.
_PAPER_2A = {
    "c4": (30.3, 51.2, 31.5),  # R50-C4
    "c4_deep": (32.7, 54.2, 34.3),  # R101-C4
    "fpn": (33.6, 55.2, 35.3),  # R50-FPN
    "fpn_deep": (35.4, 57.3, 37.5),  # R101-FPN
}
_PAPER_2E = {"mlp": (31.5, 53.7, 32.8), "mlp3": (31.5, 54.0, 32.6), "fcn": (33.6, 55.2, 35.3)}

#: The base of every Mask R-CNN table: the ``cpu_mask`` preset (FPN, RoIAlign, the FCN mask
#: head, per-class sigmoid masks) without the keypoint branch, as the paper's Table 2
#: models (the keypoint tables turn it back on).
MASK_BASE: dict[str, Any] = {"keypoints": False}

#: The final model of chapter 08: the base with the exact pixel convention (the best mask AP
#: of the grids), trained at :data:`LONG_MAX_ITER` iterations for ``mrcnn_long``.
FINAL_OVERRIDES: dict[str, Any] = {"mask_aligned": True}
#: The final model's budget: 4x the grids' 1500 iterations of ``cpu_mask``.
LONG_MAX_ITER = 6000
#: The keypoint loss weight of our Tables 5 and 6 runs. The paper, Detectron and
#: Detectron2 (``ROI_KEYPOINT_HEAD.LOSS_WEIGHT``) all use 1; at 1 our keypoint branch
#: collapses at ``cpu_mask``'s learning rate (table ``mrcnn_kp_weight``), at 0.1 it learns.
KEYPOINT_LOSS_WEIGHT = 0.1
#: The keypoint branch as Tables 5, 6 and the final model's keypoint twin train it.
_WEIGHTED_KEYPOINTS: dict[str, Any] = {
    "keypoints": True,
    "keypoint_loss_weight": KEYPOINT_LOSS_WEIGHT,
}


#: Table 2(a)'s C4 design: the RPN and RoIs on c4 (stride 16), res5 as the box head, the
#: C4 mask head (res5 + deconv, 14 x 14 masks), chapter 05's C4 anchors.
_C4: dict[str, Any] = {"fpn": False, "feature_stage": "c4", "box_head": "c5", "mask_head": "c5",
                       "anchor_sizes": FPN_TABLE3_ANCHOR_SIZES}  # fmt: skip


def _mask_setting(overrides: dict[str, Any], paper: Any, label: str, **extra: Any) -> dict:
    return {"overrides": {**MASK_BASE, **overrides}, "paper": paper, "label": label, **extra}


def mask_rcnn_grid(table: str) -> dict[str, dict[str, Any]]:
    """The named settings of one of Mask R-CNN's tables (He et al. 2017), each an override
    of the ``cpu_mask`` preset without keypoints (:data:`MASK_BASE`: FPN on the width-32
    TinyBackbone, RoIAlign, the FCN mask head of four 3x3 convs of 64 channels, per-class
    sigmoid masks), in the paper's order, with the paper's numbers (% on COCO) beside:

    - ``mrcnn_2a`` (backbone; mask AP): ``c4`` (R50-C4: the RPN and RoIs on c4, stride 16,
      res5 as the box head, and the mask head of the C4 design, res5 + deconv, 14 x 14
      masks), ``c4_deep`` (R101-C4), ``fpn`` (R50-FPN, the base), ``fpn_deep``
      (R101-FPN). "Deeper" is our TinyBackbone with two 3x3 convs per stage after the
      strided one instead of one (``backbone_blocks=2``: 1.6x the backbone's
      parameters, as R-101 has 1.7x R-50's); the C4 rows use chapter 05's C4 anchors.
    - ``mrcnn_2b`` (mask loss): ``sigmoid`` (the base), ``softmax`` (a per-pixel softmax
      over the classes), ``agnostic`` (one sigmoid mask per RoI). The paper ran it on
      R50-C4 (30.3 / 24.8 / 29.7 AP); we run it on the base.
    - ``mrcnn_2c`` (RoI layer of every branch): RoIPool, RoIWarp max/avg, RoIAlign
      max/avg (the base), on the base (the paper: R50-C4).
    - ``mrcnn_2d`` (stride 32): ``roipool`` and ``roialign_avg`` on c5 (no FPN; the
      RPN, box and mask heads all read the 4 x 4 map of a 128 px image), masks and
      boxes (``paper_box`` holds the paper's box numbers); chapter 06's Table 2(d)
      anchors.
    - ``mrcnn_2e`` (mask head): ``mlp`` (two fc layers of 256, then an fc to the 28 x 28
      masks: the paper's 1024 scaled as our FCN's 256 channels are to 64), ``mlp3``
      (three), ``fcn`` (the base).
    - ``mrcnn_3`` (multi-task; box AP): ``faster`` (the base without the mask branch:
      Faster R-CNN with RoIAlign, 37.3) vs ``mask`` (the base, 38.2).
    - ``mrcnn_5`` (keypoint AP of the persons): ``kp_only`` (keypoints, no masks, 64.2)
      vs ``kp_mask`` (both branches, 64.7). Tables 5 and 6 weight the keypoint loss 0.1
      (:data:`KEYPOINT_LOSS_WEIGHT`), not the paper's 1: at 1 the branch collapses to a
      flat heatmap on every seed (``mrcnn_kp_weight``), which would leave nothing to
      compare.
    - ``mrcnn_6`` (keypoint AP): ``kp_roipool`` (keypoint-only with RoIPool in every
      branch, 59.8) vs ``kp_roialign`` (= ``kp_only``, 64.2).
    - ``mrcnn_kp_weight`` (not in the paper; keypoint AP): the keypoint-only model with
      the keypoint loss weighted 1 (``w1``, the paper's) or 0.1 (``w0.1``, Detectron2's
      ``ROI_KEYPOINT_HEAD.LOSS_WEIGHT``; the same run as ``mrcnn_5``'s ``kp_only``): at
      ``cpu_mask``'s learning rate the branch stops learning at 1 (chapter 08).
    - ``mrcnn_pixels`` (not in the paper; mask AP): ``torchvision`` (the base: mask
      targets by RoIAlign without the half-pixel shift, masks pasted into a box rounded
      a pixel too large) vs ``exact`` (``mask_aligned=True``, Detectron2's convention;
      chapter 07 measures what the round trip loses with each).
    - ``mrcnn_long`` (the final model's budget; mask AP): ``roialign`` (the final model:
      the base with ``mask_aligned=True``) vs ``roipool`` (the same with RoIPool in every
      branch, Table 2(c)'s question) and vs ``softmax`` (the same with a softmax over the
      classes, Table 2(b)'s), meant to run at ``--max-iter`` :data:`LONG_MAX_ITER` (4x
      the grids' budget), to show whether the headline effects hold for a longer-trained
      model; vs ``c4`` (the same on the C4 design of ``mrcnn_2a``, Table 2(a)'s question:
      ``paper_2a`` holds Table 2(a)'s numbers for ``c4`` and ``roialign``, the FPN row);
      and vs ``keypoints`` (the final model with the keypoint branch, its loss weighted
      :data:`KEYPOINT_LOSS_WEIGHT`: the full Mask R-CNN of chapter 08's pictures).
    """
    if table == "mrcnn_2a":
        rows = {
            "c4": (_C4, "C4 (stride 16), res5 heads, width 32, 1 conv per stage (R50-C4)"),
            "c4_deep": ({**_C4, "backbone_blocks": 2}, "C4, 2 convs per stage (R101-C4)"),
            "fpn": ({}, "FPN P2-P6, FCN mask head, 1 conv per stage (R50-FPN)"),
            "fpn_deep": ({"backbone_blocks": 2}, "FPN, 2 convs per stage (R101-FPN)"),
        }
        return {n: _mask_setting(o, _ap_triple(_PAPER_2A[n]), lab) for n, (o, lab) in rows.items()}
    if table == "mrcnn_2b":
        return {
            "softmax": _mask_setting(
                {"mask_loss": "softmax"}, _ap_triple((24.8, 44.1, 25.1)), "softmax over classes"
            ),
            "sigmoid": _mask_setting({}, _ap_triple((30.3, 51.2, 31.5)), "per-class sigmoid"),
            "agnostic": _mask_setting(
                {"mask_class_agnostic": True}, {"AP": 29.7}, "class-agnostic sigmoid"
            ),
        }
    if table == "mrcnn_2c":
        return {
            op: _mask_setting(
                {} if op == "roialign_avg" else {"roi_op": op}, _ap_triple(paper), _ROI_LABELS[op]
            )
            for op, paper in _PAPER_2C.items()
        }
    if table == "mrcnn_2d":
        c5 = {"fpn": False, "feature_stage": "c5", "anchor_sizes": TABLE2D_ANCHOR_SIZES}
        return {
            op: _mask_setting(
                {**c5, "roi_op": op},
                _ap_triple(_PAPER_2D_MASK[op]),
                f"{_ROI_LABELS[op]}, stride 32 (c5)",
                paper_box=_ap_triple(_PAPER_2D_BOX[op]),
            )
            for op in ("roipool", "roialign_avg")
        }
    if table == "mrcnn_2e":
        mlp = {"mask_head": "mlp", "mask_mlp_size": 256}
        return {
            "mlp": _mask_setting(
                {**mlp, "mask_mlp_layers": 2}, _ap_triple(_PAPER_2E["mlp"]), "MLP, 2 fc of 256"
            ),
            "mlp3": _mask_setting(
                {**mlp, "mask_mlp_layers": 3}, _ap_triple(_PAPER_2E["mlp3"]), "MLP, 3 fc of 256"
            ),
            "fcn": _mask_setting({}, _ap_triple(_PAPER_2E["fcn"]), "FCN, 4 convs of 64"),
        }
    if table == "mrcnn_3":
        return {
            "faster": _mask_setting(
                {"masks": False}, {"AP": 37.3}, "Faster R-CNN with RoIAlign (no mask branch)"
            ),
            "mask": _mask_setting({}, {"AP": 38.2}, "Mask R-CNN (box and mask branches)"),
        }
    if table == "mrcnn_5":
        return {
            "kp_only": _mask_setting(
                {**_WEIGHTED_KEYPOINTS, "masks": False}, {"AP": 64.2}, "keypoint branch only"
            ),
            "kp_mask": _mask_setting(_WEIGHTED_KEYPOINTS, {"AP": 64.7}, "keypoints and masks"),
        }
    if table == "mrcnn_6":
        kp = {**_WEIGHTED_KEYPOINTS, "masks": False}
        return {
            "kp_roipool": _mask_setting({**kp, "roi_op": "roipool"}, {"AP": 59.8}, "RoIPool"),
            "kp_roialign": _mask_setting(kp, {"AP": 64.2}, "RoIAlign"),
        }
    if table == "mrcnn_kp_weight":
        kp = {"masks": False, "keypoints": True}
        return {
            "w1": _mask_setting(kp, None, "keypoint loss weight 1 (the paper's)"),
            "w0.1": _mask_setting(
                {**kp, "keypoint_loss_weight": KEYPOINT_LOSS_WEIGHT}, None, "weight 0.1"
            ),
        }
    if table == "mrcnn_pixels":
        return {
            "torchvision": _mask_setting({}, None, "torchvision's pixel convention"),
            "exact": _mask_setting({"mask_aligned": True}, None, "exact (Detectron2's)"),
        }
    if table == "mrcnn_long":
        return {
            "roipool": _mask_setting(
                {**FINAL_OVERRIDES, "roi_op": "roipool"},
                _ap_triple(_PAPER_2C["roipool"]),
                "RoIPool, exact pixels",
            ),  # fmt: skip
            "roialign": _mask_setting(
                FINAL_OVERRIDES,
                _ap_triple(_PAPER_2C["roialign_avg"]),
                "RoIAlign avg, exact pixels (the final model)",
                paper_2a=_ap_triple(_PAPER_2A["fpn"]),  # as the FPN row of Table 2(a)
            ),  # fmt: skip
            "softmax": _mask_setting(
                {**FINAL_OVERRIDES, "mask_loss": "softmax"},
                mask_rcnn_grid("mrcnn_2b")["softmax"]["paper"],  # Table 2(b)'s question
                "softmax over classes, exact pixels",
            ),  # fmt: skip
            "keypoints": _mask_setting(
                {**FINAL_OVERRIDES, **_WEIGHTED_KEYPOINTS},
                None,
                "with keypoints (loss weight 0.1), exact pixels",
            ),  # fmt: skip
            "c4": _mask_setting(
                {**FINAL_OVERRIDES, **_C4},
                _ap_triple(_PAPER_2A["c4"]),
                "C4 (stride 16), res5 heads, exact pixels",
                paper_2a=_ap_triple(_PAPER_2A["c4"]),
            ),  # fmt: skip
        }
    raise ValueError(f"mask_rcnn_grid: unknown table {table!r}; one of {list(MASK_TABLES)}.")


def table_grid(table: str) -> dict[str, dict[str, Any]]:
    """The settings of any table (:func:`faster_rcnn_grid` or :func:`mask_rcnn_grid`)."""
    return mask_rcnn_grid(table) if table in MASK_TABLES else faster_rcnn_grid(table)


def table_preset(table: str, scale: str = "cpu") -> str:
    """The preset a table's settings override: ``cpu`` (box tables) or ``cpu_mask``, at
    ``scale`` "cpu", or their ``ci`` versions at scale "ci"."""
    if scale not in ("ci", "cpu"):
        raise ValueError(f"scale must be 'ci' or 'cpu', got {scale!r}")
    return scale + ("_mask" if table in MASK_TABLES else "")
