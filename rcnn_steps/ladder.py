"""Moved to :mod:`rcnn_steps.experiments.ladder` (the evolution as a controlled ladder:
one change per rung, the same data and budget).

This shim keeps the old import path working, and ``python -m rcnn_steps.ladder measure |
plan | run ...``, the commands the ladder's results files record.
"""

import sys

from rcnn_steps.experiments.ladder import *  # noqa: F403 (the old path's public names)
from rcnn_steps.experiments.ladder import (
    __all__,  # noqa: F401
    main,
)

if __name__ == "__main__":
    sys.exit(main())
