"""rcnn-steps: object detection rebuilt step by step, from sliding windows to Mask R-CNN.

The modules read like the book's table of contents:

- chapter 00: :mod:`rcnn_steps.data` (the synthetic COCO-format set and its loader),
  :mod:`rcnn_steps.boxes` (IoU, NMS, box coding), :mod:`rcnn_steps.evaluation`
  (AP from scratch and through pycocotools), :mod:`rcnn_steps.viz` (drawing).
- shared plumbing: :mod:`rcnn_steps.utils` (seeds, threads, devices, results files).
"""

__version__ = "0.1.0"
