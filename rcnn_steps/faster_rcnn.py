"""Moved to :mod:`rcnn_steps.detectors.faster_rcnn` (chapter 04: Faster R-CNN, backbone,
RPN and RoI heads).

This shim keeps the old import path working, :class:`DetectorConfig` (now in
:mod:`rcnn_steps.detectors.config`) and ``train_config``, the preset's schedule
(:func:`rcnn_steps.experiments.train_config`; chapter 05 called it from here).
"""

from typing import Any

from rcnn_steps.detectors.faster_rcnn import *  # noqa: F403 (the old path's public names)
from rcnn_steps.detectors.faster_rcnn import __all__ as _moved_names
from rcnn_steps.engine import TrainConfig
from rcnn_steps.experiments import train_config as preset_train_config

__all__ = [*_moved_names, "train_config"]


def train_config(preset: str = "cpu", **overrides: Any) -> TrainConfig:
    """The :class:`~rcnn_steps.engine.TrainConfig` of a preset, with ``overrides``:
    :func:`rcnn_steps.experiments.train_config`, under its old name and default."""
    return preset_train_config(preset, **overrides)
