"""Moved to :mod:`rcnn_steps.detectors.rcnn` (chapter 02's R-CNN: a CNN per warped
proposal) and :mod:`rcnn_steps.experiments.rcnn` (how the chapter trains, evaluates and
records it).

This shim keeps the old import path working, and ``python -m rcnn_steps.rcnn proposals |
evaluate ...``, the commands the results files and the README record.
"""

import sys

from rcnn_steps.detectors.rcnn import *  # noqa: F403 (the old path's public names)
from rcnn_steps.detectors.rcnn import __all__ as _detector_names
from rcnn_steps.experiments.rcnn import *  # noqa: F403
from rcnn_steps.experiments.rcnn import __all__ as _experiment_names
from rcnn_steps.experiments.rcnn import main

__all__ = [*_detector_names, *_experiment_names]

if __name__ == "__main__":
    sys.exit(main())
