"""Moved to :mod:`rcnn_steps.experiments.grid` (a grid of training runs: in parallel,
cached in ``results/runs/``, resumable).

This shim keeps the old import path working.
"""

from rcnn_steps.experiments.grid import *  # noqa: F403 (the old path's public names)
from rcnn_steps.experiments.grid import __all__  # noqa: F401
