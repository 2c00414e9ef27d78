"""The experiments floor, the top of the library: what is run, defined once.

:mod:`rcnn_steps.experiments.presets`: one :class:`~rcnn_steps.experiments.presets.Preset`
record per detector preset (its model, training schedule, feeding, and the chapter, table
row and results file it is reported in), read by every road that trains or scores a
preset. It may import every floor below; nothing below imports it.
"""

from rcnn_steps.experiments.presets import (
    PRESETS,
    Feeding,
    Preset,
    detector_config,
    evaluated_presets,
    feeding,
    preset,
    schedule,
    train_config,
)

__all__ = [
    "Feeding",
    "PRESETS",
    "Preset",
    "detector_config",
    "evaluated_presets",
    "feeding",
    "preset",
    "schedule",
    "train_config",
]
