"""The modeling floor: the parts every detector from chapter 04 on is assembled from.

Each module holds one idea, keeps torchvision's names (so its weights load into
torchvision's model and back), and never sees a config, a dataset or a training loop: the
detectors on the floor above build the parts from their config. Modules import only
:mod:`rcnn_steps.ops`, each other and :class:`rcnn_steps.utils.StageClock`.

- :mod:`~rcnn_steps.modeling.anchors` (chapter 04): the anchors of every feature-map
  position, one grid per level;
- :mod:`~rcnn_steps.modeling.matcher` and :mod:`~rcnn_steps.modeling.sampler` (chapter 04):
  anchors or RoIs labelled by IoU with the objects, and the balanced minibatch;
- :mod:`~rcnn_steps.modeling.losses` (chapters 03-04): the multi-task losses of Fast R-CNN
  and of the RPN;
- :mod:`~rcnn_steps.modeling.backbones` (chapters 04-05): the small CPU backbone and the
  ResNets, cut where the papers cut them;
- :mod:`~rcnn_steps.modeling.rpn` (chapter 04): the region proposal network;
- :mod:`~rcnn_steps.modeling.poolers` (chapters 03, 05): :class:`RoIPooler` (one feature
  map, a named RoI layer) and :class:`MultiScaleRoIPooler` (each RoI from its pyramid
  level, FPN eq. 1);
- :mod:`~rcnn_steps.modeling.fpn` (chapter 05): the feature pyramid;
- :mod:`~rcnn_steps.modeling.roi_heads` (chapters 03-04): the box branch (sample, pool,
  head, predictor, loss or detections) and the test-time cascade into the branches;
- :mod:`~rcnn_steps.modeling.mask_head` and :mod:`~rcnn_steps.modeling.keypoint_head`
  (chapter 07): the mask and keypoint branches, their targets, losses and pasting.

Import from the module that holds a name, e.g. ``from rcnn_steps.modeling.rpn import
RegionProposalNetwork``.
"""
