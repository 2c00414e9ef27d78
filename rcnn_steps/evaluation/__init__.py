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

Chapter 08 adds what AP does not say, the kinds of error: :func:`classify_errors` sorts
each object of an image into hit / wrong class / poor box / missed and each detection into
hit / duplicate / wrong class / poor box / background, and :func:`error_summary` counts
them over a data set, by object size and class (module ``errors``).

Boxes follow COCO inside this module: ground truths and result dicts carry ``[x, y, w, h]``
(``xywh``); model outputs (and the rest of the library) use ``[x1, y1, x2, y2]`` (``xyxy``).
"""

from rcnn_steps.evaluation.ap import (
    COCO_AREA_RANGES,
    COCO_IOU_THRESHOLDS,
    COCO_RECALL_THRESHOLDS,
    average_precision_area,
    average_precision_coco101,
    average_precision_voc11,
    precision_recall,
    scaled_area_ranges,
)
from rcnn_steps.evaluation.cocoeval import as_coco, coco_evaluate, detections_to_coco
from rcnn_steps.evaluation.errors import (
    DETECTION_KINDS,
    OBJECT_KINDS,
    SIZE_CLASSES,
    ErrorSummary,
    Failure,
    ImageErrors,
    classify_errors,
    error_summary,
    size_classes,
)
from rcnn_steps.evaluation.matching import (
    Matches,
    coco_box_ap_from_scratch,
    match_detections,
)
from rcnn_steps.evaluation.simulate import simulate_detections, subset_ground_truth

__all__ = [
    "COCO_AREA_RANGES",
    "COCO_IOU_THRESHOLDS",
    "COCO_RECALL_THRESHOLDS",
    "DETECTION_KINDS",
    "OBJECT_KINDS",
    "SIZE_CLASSES",
    "ErrorSummary",
    "Failure",
    "ImageErrors",
    "Matches",
    "as_coco",
    "average_precision_area",
    "average_precision_coco101",
    "average_precision_voc11",
    "classify_errors",
    "coco_box_ap_from_scratch",
    "coco_evaluate",
    "detections_to_coco",
    "error_summary",
    "match_detections",
    "precision_recall",
    "scaled_area_ranges",
    "simulate_detections",
    "size_classes",
    "subset_ground_truth",
]
