"""The ops floor: the tensor operations every detector is built from.

Nothing here knows about models, training or data; each module imports only torch, the
standard library and the other modules of this floor.

- :mod:`~rcnn_steps.ops.boxes` (chapter 00; :class:`BoxCoder` chapters 01-04): areas, IoU,
  non-maximum suppression, clipping, formats, and box coding;
- :mod:`~rcnn_steps.ops.image_list` (chapter 04): :class:`ImageList`, a batch of images of
  different sizes as one padded tensor plus their true sizes.

The public names of every module are re-exported here, so the floors above import them as
``from rcnn_steps.ops import box_iou, ImageList``.
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

__all__ = [
    "BoxCoder",
    "ImageList",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "cxcywh_to_xyxy",
    "nms",
    "remove_small_boxes",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]
