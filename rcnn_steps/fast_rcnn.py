"""Moved to :mod:`rcnn_steps.detectors.fast_rcnn` (chapter 03: Fast R-CNN, RoIPool on one
shared feature map).

This shim keeps the old import path working, and ``python -m rcnn_steps.fast_rcnn
...``, the commands the results files and the README record.
"""

import sys

from rcnn_steps.detectors.fast_rcnn import *  # noqa: F403 (the old path's public names)
from rcnn_steps.detectors.fast_rcnn import (
    __all__,  # noqa: F401
    main,
)

if __name__ == "__main__":
    sys.exit(main())
