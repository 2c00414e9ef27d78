"""Moved to :mod:`rcnn_steps.detectors.mask_rcnn` (chapter 07: Mask R-CNN's test-time
cascade and torchvision's twin).

This shim keeps the old import path working.
"""

from rcnn_steps.detectors.mask_rcnn import *  # noqa: F403 (the old path's public names)
from rcnn_steps.detectors.mask_rcnn import __all__  # noqa: F401
