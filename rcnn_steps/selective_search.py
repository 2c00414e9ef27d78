"""Moved to :mod:`rcnn_steps.detectors.selective_search` (chapter 02's selective search:
class-independent proposals from grouped segments) and
:mod:`rcnn_steps.experiments.selective_search` (its measurements beside OpenCV's).

This shim keeps the old import path working, and ``python -m rcnn_steps.selective_search
evaluate | quality ...``, the commands the results files and the README record.
"""

import sys

from rcnn_steps.detectors.selective_search import *  # noqa: F403 (the old path's public names)
from rcnn_steps.detectors.selective_search import __all__ as _detector_names
from rcnn_steps.experiments.selective_search import *  # noqa: F403
from rcnn_steps.experiments.selective_search import __all__ as _experiment_names
from rcnn_steps.experiments.selective_search import main

__all__ = [*_detector_names, *_experiment_names]

if __name__ == "__main__":
    sys.exit(main())
