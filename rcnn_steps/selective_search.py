"""Moved to :mod:`rcnn_steps.detectors.selective_search` (chapter 02: selective search's
proposals).

This shim keeps the old import path working, and ``python -m rcnn_steps.selective_search
...``, the commands the results files and the README record.
"""

import sys

from rcnn_steps.detectors.selective_search import *  # noqa: F403 (the old path's public names)
from rcnn_steps.detectors.selective_search import (
    __all__,  # noqa: F401
    main,
)

if __name__ == "__main__":
    sys.exit(main())
