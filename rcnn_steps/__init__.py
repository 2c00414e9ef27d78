"""rcnn-steps: object detection rebuilt step by step, from sliding windows to Mask R-CNN.

The library is being arranged in floors, each importing only from the floors below it.
The first is in place: :mod:`rcnn_steps.ops`, the tensor operations (boxes, image lists,
the RoI layers and their readable references), which imports nothing but torch. The other
modules still sit directly in the package.

The modules read like the book's table of contents:

- chapter 00: :mod:`rcnn_steps.data` (the synthetic COCO-format set and its loader),
  :mod:`rcnn_steps.ops.boxes` (IoU, NMS, box coding), :mod:`rcnn_steps.evaluation`
  (AP from scratch and through pycocotools), :mod:`rcnn_steps.viz` (drawing);
- chapter 01: :mod:`rcnn_steps.engine` (the one training loop),
  :mod:`rcnn_steps.sliding_window`;
- chapter 02: :mod:`rcnn_steps.selective_search`, :mod:`rcnn_steps.rcnn`;
- chapter 03: :mod:`rcnn_steps.ops.roipool` (RoIPool and its readable reference),
  :mod:`rcnn_steps.losses`, :mod:`rcnn_steps.fast_rcnn`;
- chapter 04: :mod:`rcnn_steps.ops.image_list`, :mod:`rcnn_steps.anchors`,
  :mod:`rcnn_steps.matcher`, :mod:`rcnn_steps.sampler`, :mod:`rcnn_steps.backbones`,
  :mod:`rcnn_steps.rpn`, :mod:`rcnn_steps.roi_heads`, :mod:`rcnn_steps.faster_rcnn`;
- chapter 05: :mod:`rcnn_steps.fpn` (the feature pyramid), :mod:`rcnn_steps.poolers`
  (RoIs pooled from their level), and ResNet backbones in :mod:`rcnn_steps.backbones`;
- chapter 06: :mod:`rcnn_steps.ops.roialign` (RoIAlign, RoIWarp and RoIAlign's readable
  reference), :mod:`rcnn_steps.ops.roi_layers` (Mask R-CNN Table 2(c)'s RoI layers as one
  config field);
- chapter 07: :mod:`rcnn_steps.mask_head` (mask targets, per-class sigmoid or softmax,
  pasting), :mod:`rcnn_steps.keypoint_head` (keypoints as one-hot heatmaps),
  :mod:`rcnn_steps.mask_rcnn` (the test-time cascade), :mod:`rcnn_steps.runner` (a preset
  trained and scored);
- chapter 08: :mod:`rcnn_steps.ablations` (the papers' tables as data),
  :mod:`rcnn_steps.grid` (their runs, cached and resumable), :mod:`rcnn_steps.cli`
  (``python -m rcnn_steps train | predict | evaluate | export``);
- shared plumbing: :mod:`rcnn_steps.utils` (seeds, threads, devices, results files),
  :mod:`rcnn_steps.evolution` (the table of every chapter's detector).
"""

__version__ = "0.1.0"
