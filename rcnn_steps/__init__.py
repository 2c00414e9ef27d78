"""rcnn-steps: object detection rebuilt step by step, from sliding windows to Mask R-CNN.

The library is arranged in floors, each importing only from the floors below it
(``tests/test_layout.py`` checks it, in function bodies too):

- :mod:`rcnn_steps.ops`: the tensor operations (boxes, image lists, the RoI layers and
  their readable references); imports nothing but torch;
- :mod:`rcnn_steps.modeling`: the parts a detector is built from (anchors, matcher,
  sampler, losses, backbones, RPN, poolers, FPN, the box, mask and keypoint branches);
  imports ``ops``;
- :mod:`rcnn_steps.evaluation`: AP from scratch (``ap``, ``matching``), pycocotools'
  evaluator (``cocoeval``), where detections fail (``errors``); imports ``ops``;
- :mod:`rcnn_steps.engine`: the one training loop and what it keeps (config, optimizer
  and schedule, losses, data order, random states, several processes, checkpoints,
  metrics, the run folder); imports :mod:`rcnn_steps.utils`;
- :mod:`rcnn_steps.detectors`: one module per chapter's detector, and
  :class:`~rcnn_steps.detectors.config.DetectorConfig`; imports ``ops``, ``modeling`` and
  ``utils`` (one known exception, listed in the test);
- :mod:`rcnn_steps.viz`: drawing, one module per kind of picture; imports ``ops``,
  ``modeling``, ``detectors`` and ``utils`` (the explorers' views compute with them);
- :mod:`rcnn_steps.experiments`, the top: each detector preset defined once (a
  :class:`~rcnn_steps.experiments.Preset` record: model, schedule, feeding, and where it is
  reported), the runner, grids, the papers' tables, the ladder, the evolution table and
  each chapter command's training and scoring; it may import every floor, and no floor
  imports it but the command line;
- :mod:`rcnn_steps.cli`, above them all: ``python -m rcnn_steps <command>``, the library's
  commands and every chapter's; only ``python -m rcnn_steps`` imports it.

:mod:`rcnn_steps.data` (the synthetic set, the COCO loader, transforms, the proposal
cache), :mod:`rcnn_steps.explorers` and :mod:`rcnn_steps.utils` still
sit beside the floors. The old flat paths (``rcnn_steps.faster_rcnn``,
``rcnn_steps.ablations``, ...) are shims, so old imports and every recorded
``python -m rcnn_steps.<module>`` command still work.

The modules read like the book's table of contents:

- chapter 00, objects, boxes and scores: :mod:`rcnn_steps.data` (the synthetic
  COCO-format set, :mod:`rcnn_steps.data.synth` with its ``synth_config``,
  ``synth_drawing``, ``synth_hard`` and ``synth_scene`` parts, and its loader,
  :mod:`rcnn_steps.data.coco`, with the annotation file's checks in ``coco_json``),
  :mod:`rcnn_steps.ops.boxes` (IoU, NMS; its checks in :mod:`rcnn_steps.ops.box_checks`),
  :mod:`rcnn_steps.evaluation` (AP from scratch and through pycocotools),
  :mod:`rcnn_steps.viz` (drawing);
- chapter 01, sliding windows: :mod:`rcnn_steps.engine` (the one training loop),
  :mod:`rcnn_steps.ops.box_coder` (box coding, chapters 01-04),
  :mod:`rcnn_steps.detectors.sliding_window` (with its crops,
  :mod:`rcnn_steps.detectors.window_crops`, and windows,
  :mod:`rcnn_steps.detectors.window_grids`), run by
  :mod:`rcnn_steps.experiments.sliding_window`;
- chapter 02, selective search and R-CNN: :mod:`rcnn_steps.detectors.selective_search`
  (its grouping in :mod:`rcnn_steps.detectors.region_grouping`, recall and MABO in
  :mod:`rcnn_steps.detectors.proposal_measures`; measured by
  :mod:`rcnn_steps.experiments.selective_search`),
  :mod:`rcnn_steps.data.proposals` (the proposal cache), :mod:`rcnn_steps.detectors.rcnn`,
  run by :mod:`rcnn_steps.experiments.rcnn`;
- chapter 03, Fast R-CNN: :mod:`rcnn_steps.ops.roipool` (RoIPool and its readable
  reference), :mod:`rcnn_steps.modeling.losses`, :mod:`rcnn_steps.detectors.fast_rcnn`, run
  by :mod:`rcnn_steps.experiments.fast_rcnn`;
- chapter 04, Faster R-CNN: :mod:`rcnn_steps.ops.image_list`,
  :mod:`rcnn_steps.modeling.anchors`, :mod:`rcnn_steps.modeling.matcher`,
  :mod:`rcnn_steps.modeling.sampler`, :mod:`rcnn_steps.modeling.backbones`,
  :mod:`rcnn_steps.modeling.rpn`, :mod:`rcnn_steps.modeling.roi_heads`,
  :mod:`rcnn_steps.detectors.config` (every switch, and the presets by scale; what each
  field accepts in :mod:`rcnn_steps.detectors.config_fields`),
  :mod:`rcnn_steps.detectors.parts` (the parts built from the config, shared with chapter
  03), :mod:`rcnn_steps.detectors.faster_rcnn`, and the papers' tables as grids
  (:mod:`rcnn_steps.experiments.paper_tables`, :mod:`rcnn_steps.experiments.ablations`,
  :mod:`rcnn_steps.experiments.grid`);
- chapter 05, feature pyramids: :mod:`rcnn_steps.modeling.fpn`,
  :mod:`rcnn_steps.modeling.poolers` (RoIs pooled from their level), and ResNet backbones
  in :mod:`rcnn_steps.modeling.backbones`;
- chapter 06, RoIAlign: :mod:`rcnn_steps.ops.roialign` (RoIAlign and RoIWarp),
  :mod:`rcnn_steps.ops.roialign_sampling` (where RoIAlign reads),
  :mod:`rcnn_steps.ops.roialign_reference` (RoIAlign's readable reference),
  :mod:`rcnn_steps.ops.roi_layers` (Mask R-CNN Table 2(c)'s RoI layers as one config
  field);
- chapter 07, masks and keypoints: :mod:`rcnn_steps.modeling.mask_head` (mask targets,
  per-class sigmoid or softmax, pasting), :mod:`rcnn_steps.modeling.keypoint_head`
  (keypoints as one-hot heatmaps), :mod:`rcnn_steps.detectors.mask_rcnn` (the test-time
  cascade, torchvision's twin), :mod:`rcnn_steps.experiments.runner` (a preset trained and
  scored), :mod:`rcnn_steps.experiments.run_data` (what a run reads),
  :mod:`rcnn_steps.experiments.scoring` (detections at test time and their AP);
- chapter 08, the full model and the ablations: :mod:`rcnn_steps.experiments` (the
  presets, each defined once), :mod:`rcnn_steps.experiments.paper_tables` (the papers'
  tables as data), :mod:`rcnn_steps.experiments.ablations` (run as grids),
  :mod:`rcnn_steps.experiments.effects` (read back: effects against the seed spread),
  :mod:`rcnn_steps.experiments.grid` (their runs, cached and resumable),
  :mod:`rcnn_steps.experiments.ladder` (one change per rung; the rungs in
  :mod:`rcnn_steps.experiments.ladder_rungs`, one rung's run in
  :mod:`rcnn_steps.experiments.ladder_runner`),
  :mod:`rcnn_steps.experiments.datasets` (the sets by name, at 128 and 256 px, flat or hard),
  :mod:`rcnn_steps.experiments.size_effects` (effects against object size in cells),
  :mod:`rcnn_steps.experiments.evolution` (the table of every chapter's detector),
  :mod:`rcnn_steps.evaluation.errors` (where the final model fails), :mod:`rcnn_steps.cli`
  (``python -m rcnn_steps train | predict | evaluate | export``, and each chapter's
  command: ``python -m rcnn_steps ladder plan --data 128``);
- chapters 04-06: :mod:`rcnn_steps.explorers` (sliders on three of :mod:`rcnn_steps.viz`'s
  figures: anchor labels, pyramid levels, RoIPool's bins against RoIAlign's; the one module
  that needs ipywidgets);
- shared plumbing: :mod:`rcnn_steps.utils` (seeds, threads, devices, results files).
"""

__version__ = "0.1.0"
