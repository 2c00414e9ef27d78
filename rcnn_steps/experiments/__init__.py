"""The experiments floor, the top of the library: what is run, defined once, and the
roads that run it. It may import every floor below; nothing below imports it.

- :mod:`rcnn_steps.experiments.presets`: one
  :class:`~rcnn_steps.experiments.presets.Preset` record per detector preset (its model,
  training schedule, feeding, and the chapter, table row and results file it is reported
  in), read by every road that trains or scores a preset;
- :mod:`rcnn_steps.experiments.runner`: a preset trained and scored
  (:func:`~rcnn_steps.experiments.runner.run_setting`), on the book's set or your own,
  re-exporting the two modules it reads: :mod:`rcnn_steps.experiments.run_data` (what a
  run reads: a folder's (train, val) pair, checked, and its selective-search proposals)
  and :mod:`rcnn_steps.experiments.scoring` (a trained detector scored: detections at test
  time and their COCO AP);
- :mod:`rcnn_steps.experiments.grid`: many runs in parallel, each cached in
  ``results/runs/`` by a key of what decides its result, resumable;
- :mod:`rcnn_steps.experiments.paper_tables`: the papers' ablation tables as data (each
  table's settings and the paper's numbers beside them);
- :mod:`rcnn_steps.experiments.ablations`: those tables run as grids
  (``python -m rcnn_steps.ablations grid``), re-exporting
  :mod:`rcnn_steps.experiments.effects` (their results files read back, and the effects
  in them against the seed spread and the paper's);
- :mod:`rcnn_steps.experiments.ladder`: the evolution as a controlled ladder, one change
  per rung (``python -m rcnn_steps.ladder``), re-exporting
  :mod:`rcnn_steps.experiments.ladder_rungs` (the rungs and the budget rule) and
  :mod:`rcnn_steps.experiments.ladder_runner` (one rung trained and scored, and the
  selective-search proposals made before the grid starts);
- :mod:`rcnn_steps.experiments.datasets`: the data sets the ladder and the grids run on,
  by name (``--data 256``), and the detector fields scaled with their resolution;
- :mod:`rcnn_steps.experiments.size_effects`: the ablations' effects over the paper's
  against object size in feature cells, at each resolution (chapter 08's size test);
- :mod:`rcnn_steps.experiments.evolution`: the evolution table, one row per chapter's
  detector;
- one module per chapter command of chapters 01-03, each training, scoring and recording
  its chapter's detector: :mod:`~rcnn_steps.experiments.sliding_window`,
  :mod:`~rcnn_steps.experiments.selective_search` (proposals measured beside OpenCV's),
  :mod:`~rcnn_steps.experiments.rcnn`, :mod:`~rcnn_steps.experiments.fast_rcnn`
  (``python -m rcnn_steps.<chapter> ...``); chapters 04-08 run through
  :mod:`rcnn_steps.cli` (``python -m rcnn_steps evaluate --preset ...``) and the runner.

The old paths (``rcnn_steps.runner``, ``.grid``, ``.ablations``, ``.ladder``,
``.evolution``, and the chapters' ``rcnn_steps.sliding_window`` and others) are shims that
keep old imports and the recorded ``python -m`` commands working.
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
