"""Moved to :mod:`rcnn_steps.detectors.sliding_window` (chapter 01: a classifier slid over
every window).

This shim keeps the old import path working, and ``python -m rcnn_steps.sliding_window
...``, the commands the results files and the README record.
"""

import sys

from rcnn_steps.detectors.sliding_window import *  # noqa: F403 (the old path's public names)
from rcnn_steps.detectors.sliding_window import (
    __all__,  # noqa: F401
    main,
)

if __name__ == "__main__":
    sys.exit(main())
