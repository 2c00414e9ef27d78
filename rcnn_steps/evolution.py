"""Moved to :mod:`rcnn_steps.experiments.evolution` (the evolution table: one row per
chapter's detector).

This shim keeps the old import path working.
"""

from rcnn_steps.experiments.evolution import *  # noqa: F403 (the old path's public names)
from rcnn_steps.experiments.evolution import __all__  # noqa: F401
