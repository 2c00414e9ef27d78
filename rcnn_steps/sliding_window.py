"""Moved to :mod:`rcnn_steps.detectors.sliding_window` (chapter 01's detector: a classifier
slid over every window) and :mod:`rcnn_steps.experiments.sliding_window` (how the chapter
trains, evaluates and records it).

This shim keeps the old import path working, and ``python -m rcnn_steps.sliding_window
evaluate ...``, the command the results files and the README record.
"""

import sys

from rcnn_steps.detectors.sliding_window import *  # noqa: F403 (the old path's public names)
from rcnn_steps.detectors.sliding_window import __all__ as _detector_names
from rcnn_steps.experiments.sliding_window import *  # noqa: F403
from rcnn_steps.experiments.sliding_window import __all__ as _experiment_names
from rcnn_steps.experiments.sliding_window import main

__all__ = [*_detector_names, *_experiment_names]

if __name__ == "__main__":
    sys.exit(main())
