"""The ops floor: the tensor operations every detector is built from.

Nothing here knows about models, training or data; each module imports only torch, the
standard library and the other modules of this floor.

- :mod:`~rcnn_steps.ops.boxes` (chapter 00): areas, IoU, non-maximum suppression,
  clipping and formats;
- :mod:`~rcnn_steps.ops.box_coder` (chapters 01-04): :class:`BoxCoder`, box coding (boxes
  as regression targets relative to reference boxes; re-exported by ``boxes``);
- :mod:`~rcnn_steps.ops.box_checks`: the arguments the box functions share, checked;
- :mod:`~rcnn_steps.ops.image_list` (chapter 04): :class:`ImageList`, a batch of images of
  different sizes as one padded tensor plus their true sizes;
- the RoI layers, which read a fixed-size feature for every region of interest off a shared
  feature map, each fast vectorised version beside a readable reference written as the
  paper defines it (tested equal to each other and to torchvision's):

  - :mod:`~rcnn_steps.ops.roipool` (chapter 03, Fast R-CNN): :func:`roi_pool` and
    :func:`roi_pool_reference`, with :func:`roi_pool_cells` and :func:`roi_pool_region`
    to show what its rounding reads; :mod:`~rcnn_steps.ops.roipool_tables` holds the max
    tables of one of its two forwards (for large bins on a small map);
  - :mod:`~rcnn_steps.ops.roialign` (chapter 06, Mask R-CNN): :func:`roi_align` and
    :func:`roi_warp`, re-exporting the two modules beside it:
    :mod:`~rcnn_steps.ops.roialign_sampling` (where RoIAlign reads:
    :func:`roi_align_sampling_points` and :func:`roi_align_bins` to show it) and
    :mod:`~rcnn_steps.ops.roialign_reference` (:func:`roi_align_reference` and
    :func:`bilinear_sample`, RoIAlign as the paper defines it);
  - :mod:`~rcnn_steps.ops.roi_layers` (chapter 06): :func:`get_roi_op`, the rows of Mask
    R-CNN Table 2(c) (:data:`ROI_OP_NAMES`) as one config field;
  - :mod:`~rcnn_steps.ops.roi_checks`: the arguments they share, checked, and
    ``CPU_THREADS``, the layers' CPU thread limit (set it on that module:
    ``rcnn_steps.ops.roi_checks.CPU_THREADS = 1``).

The public names of every module are re-exported here, so the floors above import them as
``from rcnn_steps.ops import box_iou, ImageList, roi_align``.
"""

from rcnn_steps.ops.boxes import (
    BoxCoder,
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    cxcywh_to_xyxy,
    nms,
    remove_small_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from rcnn_steps.ops.image_list import ImageList
from rcnn_steps.ops.roi_layers import ROI_OP_NAMES, RoIOp, get_roi_op
from rcnn_steps.ops.roialign import (
    bilinear_sample,
    roi_align,
    roi_align_bins,
    roi_align_reference,
    roi_align_sampling_points,
    roi_warp,
)
from rcnn_steps.ops.roipool import roi_pool, roi_pool_cells, roi_pool_reference, roi_pool_region

__all__ = [
    "ROI_OP_NAMES",
    "BoxCoder",
    "ImageList",
    "RoIOp",
    "batched_nms",
    "bilinear_sample",
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "cxcywh_to_xyxy",
    "get_roi_op",
    "nms",
    "remove_small_boxes",
    "roi_align",
    "roi_align_bins",
    "roi_align_reference",
    "roi_align_sampling_points",
    "roi_pool",
    "roi_pool_cells",
    "roi_pool_reference",
    "roi_pool_region",
    "roi_warp",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]
