"""Moved to :mod:`rcnn_steps.experiments.runner` (a preset trained and scored:
:func:`~rcnn_steps.experiments.runner.run_setting`, the datasets and evaluators it uses).

This shim keeps the old import path working.
"""

from rcnn_steps.experiments.runner import *  # noqa: F403 (the old path's public names)
from rcnn_steps.experiments.runner import __all__  # noqa: F401
