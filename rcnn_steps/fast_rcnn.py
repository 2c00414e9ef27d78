"""Moved to :mod:`rcnn_steps.detectors.fast_rcnn` (chapter 03's Fast R-CNN: RoIPool on one
shared feature map) and :mod:`rcnn_steps.experiments.fast_rcnn` (how the chapter trains,
evaluates and records it).

This shim keeps the old import path working, and ``python -m rcnn_steps.fast_rcnn
evaluate ...``, the command the results files and the README record.
"""

import sys

from rcnn_steps.detectors.fast_rcnn import *  # noqa: F403 (the old path's public names)
from rcnn_steps.detectors.fast_rcnn import __all__ as _detector_names
from rcnn_steps.experiments.fast_rcnn import *  # noqa: F403
from rcnn_steps.experiments.fast_rcnn import __all__ as _experiment_names
from rcnn_steps.experiments.fast_rcnn import main

__all__ = [*_detector_names, *_experiment_names]

if __name__ == "__main__":
    sys.exit(main())
