"""rcnn-steps: object detection rebuilt step by step, from sliding windows to Mask R-CNN.

The library is being arranged in floors, each importing only from the floors below it
(``tests/test_layout.py`` checks it). Four are in place: :mod:`rcnn_steps.ops`, the
tensor operations (boxes, image lists, the RoI layers and their readable references),
which imports nothing but torch; :mod:`rcnn_steps.modeling`, the parts a detector is built
from (anchors, matcher, sampler, losses, backbones, RPN, poolers, FPN, the box, mask and
keypoint branches), which imports only ``ops``; :mod:`rcnn_steps.evaluation` (AP from
scratch in ``ap`` and ``matching``, pycocotools' evaluator in ``cocoeval``), which imports
only ``ops``; and :mod:`rcnn_steps.engine`, the one training loop and what it keeps
(config, optimizer and schedule, losses, data order, random states, several processes,
checkpoints, metrics, the run folder), which imports only :mod:`rcnn_steps.utils`. At
the top, :mod:`rcnn_steps.experiments` defines each detector preset once (a
:class:`~rcnn_steps.experiments.Preset` record: its model, training schedule, feeding,
and the chapter, table row and results file it is reported in), read by every road that
trains one; it may import every floor, and no floor imports it. The detectors, data and
the other experiment modules still sit directly in the package.

The modules read like the book's table of contents:

- chapter 00: :mod:`rcnn_steps.data` (the synthetic COCO-format set and its loader),
  :mod:`rcnn_steps.ops.boxes` (IoU, NMS, box coding), :mod:`rcnn_steps.evaluation`
  (AP from scratch and through pycocotools), :mod:`rcnn_steps.viz` (drawing);
- chapter 01: :mod:`rcnn_steps.engine` (the one training loop),
  :mod:`rcnn_steps.detectors.sliding_window`;
- chapter 02: :mod:`rcnn_steps.detectors.selective_search`, :mod:`rcnn_steps.detectors.rcnn`;
- chapter 03: :mod:`rcnn_steps.ops.roipool` (RoIPool and its readable reference),
  :mod:`rcnn_steps.modeling.losses`, :mod:`rcnn_steps.detectors.fast_rcnn`;
- chapter 04: :mod:`rcnn_steps.ops.image_list`, :mod:`rcnn_steps.modeling.anchors`,
  :mod:`rcnn_steps.modeling.matcher`, :mod:`rcnn_steps.modeling.sampler`,
  :mod:`rcnn_steps.modeling.backbones`, :mod:`rcnn_steps.modeling.rpn`,
  :mod:`rcnn_steps.modeling.roi_heads`, :mod:`rcnn_steps.detectors.faster_rcnn`;
- chapter 05: :mod:`rcnn_steps.modeling.fpn` (the feature pyramid),
  :mod:`rcnn_steps.modeling.poolers` (RoIs pooled from their level), and ResNet backbones
  in :mod:`rcnn_steps.modeling.backbones`;
- chapter 06: :mod:`rcnn_steps.ops.roialign` (RoIAlign, RoIWarp and RoIAlign's readable
  reference), :mod:`rcnn_steps.ops.roi_layers` (Mask R-CNN Table 2(c)'s RoI layers as one
  config field);
- chapter 07: :mod:`rcnn_steps.modeling.mask_head` (mask targets, per-class sigmoid or
  softmax, pasting), :mod:`rcnn_steps.modeling.keypoint_head` (keypoints as one-hot
  heatmaps),
  :mod:`rcnn_steps.detectors.mask_rcnn` (the test-time cascade),
  :mod:`rcnn_steps.experiments.runner` (a preset trained and scored);
- chapter 08: :mod:`rcnn_steps.experiments` (the presets, each defined once),
  :mod:`rcnn_steps.experiments.ablations` (the papers' tables as data),
  :mod:`rcnn_steps.experiments.grid` (their runs, cached and resumable), :mod:`rcnn_steps.cli`
  (``python -m rcnn_steps train | predict | evaluate | export``);
- chapters 04-06: :mod:`rcnn_steps.explorers` (sliders on three of :mod:`rcnn_steps.viz`'s
  figures: anchor labels, pyramid levels, RoIPool's bins against RoIAlign's; the one module
  that needs ipywidgets);
- shared plumbing: :mod:`rcnn_steps.utils` (seeds, threads, devices, results files),
  :mod:`rcnn_steps.experiments.evolution` (the table of every chapter's detector).
"""

__version__ = "0.1.0"
