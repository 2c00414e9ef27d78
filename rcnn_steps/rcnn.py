"""Moved to :mod:`rcnn_steps.detectors.rcnn` (chapter 02: R-CNN, a CNN per warped
proposal).

This shim keeps the old import path working, and ``python -m rcnn_steps.rcnn
...``, the commands the results files and the README record.
"""

import sys

from rcnn_steps.detectors.rcnn import *  # noqa: F403 (the old path's public names)
from rcnn_steps.detectors.rcnn import (
    __all__,  # noqa: F401
    main,
)

if __name__ == "__main__":
    sys.exit(main())
