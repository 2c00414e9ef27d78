"""The detectors floor: one module per chapter's detector (chapters 01 and 02's with their
parts beside them), built from the parts below.

- :mod:`rcnn_steps.detectors.sliding_window` (chapter 01): a classifier over every window,
  trained on the crops of :mod:`~rcnn_steps.detectors.window_crops` and slid over the
  windows of :mod:`~rcnn_steps.detectors.window_grids`;
- :mod:`rcnn_steps.detectors.selective_search` (chapter 02): class-independent proposals
  from grouped segments (the grouping: :mod:`~rcnn_steps.detectors.region_grouping`),
  measured by :mod:`~rcnn_steps.detectors.proposal_measures` (recall, MABO);
- :mod:`rcnn_steps.detectors.rcnn` (chapter 02): R-CNN, each proposal warped and
  classified by its own CNN pass;
- :mod:`rcnn_steps.detectors.fast_rcnn` (chapter 03): Fast R-CNN, RoIs pooled from one
  shared feature map;
- :mod:`rcnn_steps.detectors.config` (chapters 03-07): :class:`DetectorConfig`, every
  switch of the RoI detectors in one dataclass, with its presets by scale (what each
  field accepts: :mod:`~rcnn_steps.detectors.config_fields`);
- :mod:`rcnn_steps.detectors.parts` (chapters 03-07): the backbone, RPN, RoI layer and
  RoI heads with their branches, built from the config, for Fast and Faster R-CNN alike;
- :mod:`rcnn_steps.detectors.faster_rcnn` (chapters 04-06): Faster R-CNN, backbone, RPN
  and RoI heads built from the config (FPN and RoIAlign are config fields);
- :mod:`rcnn_steps.detectors.mask_rcnn` (chapter 07): the test-time cascade and
  torchvision's twin.

The floor imports :mod:`rcnn_steps.ops`, :mod:`rcnn_steps.modeling` and
:mod:`rcnn_steps.utils`, and one known exception (``tests/test_layout.py``): R-CNN's
module re-exports the proposal cache of :mod:`rcnn_steps.data.proposals`, which chapters
02-04 import from it. How each chapter trains, scores and records its detector is the
top floor's (:mod:`rcnn_steps.experiments`). The old paths (``rcnn_steps.faster_rcnn`` and
the others) are shims.
"""
