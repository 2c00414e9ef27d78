"""The ladder's rungs: R-CNN, then one idea at a time up to Mask R-CNN, each a
:class:`Rung` record (its run kind, its overrides and the one change from the rung before),
and the budget rule every rung trains under (:data:`BUDGET_RULE`).

Every rung from ``fast_rcnn`` on is an override of one preset, :data:`LADDER_PRESET`, from
one base, :data:`LADDER_BASE`, so consecutive rungs' configs differ by exactly the
field(s) each rung names (:func:`config_diff`); R-CNN's rung trains chapter 02's network
(:data:`RCNN_OVERRIDES`) on :func:`rcnn_windows_per_iteration` warped windows per
iteration. :mod:`rcnn_steps.experiments.ladder` (the table of the rungs, their runs and
the commands) re-exports them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rcnn_steps.experiments.paper_tables import FINAL_OVERRIDES, LONG_MAX_ITER, MASK_BASE
from rcnn_steps.experiments.runner import detector_config, feeding

__all__ = [
    "BUDGET_RULE",
    "LADDER",
    "LADDER_BASE",
    "LADDER_PRESET",
    "Rung",
    "config_diff",
    "rcnn_windows_per_iteration",
]

#: The preset every detector rung overrides (and whose schedule R-CNN trains on too).
LADDER_PRESET = "cpu_mask"
#: The overrides every detector rung starts from: the final model of chapter 08
#: (:data:`~rcnn_steps.experiments.ablations.FINAL_OVERRIDES`) without keypoints
#: (:data:`~rcnn_steps.experiments.ablations.MASK_BASE`); ``mask_aligned`` does nothing until the
#: mask branch is on.
LADDER_BASE: dict[str, Any] = {**MASK_BASE, **FINAL_OVERRIDES}
#: R-CNN's network (chapter 02's preset): 32 x 32 crops, a CNN of width 16.
RCNN_OVERRIDES: dict[str, Any] = {"crop_size": 32, "width": 16}
#: Val images of every rung: the whole val split.
LADDER_EVAL_IMAGES = 200
LADDER_SEEDS = (0, 1, 2)
#: The budget rule, as every results file states it.
BUDGET_RULE = (
    "every rung: the {preset} schedule ({max_iter} iterations, the long rung {long}) on all "
    "train images, tested on {eval} val images, seconds per image on 1 thread; a detector "
    "iteration is {images} images x {rois} sampled RoIs (a quarter foreground, IoU >= 0.5), "
    "R-CNN's is {windows} warped windows drawn from all training images' windows (a quarter "
    "foreground, IoU >= 0.5), on the same schedule; wall-clock recorded per run"
)


@dataclass(frozen=True)
class Rung:
    """One rung of the ladder: a run kind (``method``: ``"rcnn"``, or a
    :data:`rcnn_steps.experiments.runner.METHODS`), its overrides (of :data:`LADDER_PRESET`'s
    :class:`~rcnn_steps.detectors.config.DetectorConfig`; for ``"rcnn"`` of
    :class:`~rcnn_steps.experiments.rcnn.RCNNConfig`), and the one change from the rung before:
    ``change`` in words, ``changes`` the config fields it sets (empty where the change
    is the method, the pipeline or the budget), ``follows`` the fields the config
    derives from them."""

    name: str
    label: str
    change: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, Any] = field(default_factory=dict)
    follows: tuple[str, ...] = ()
    #: None: the ladder's budget (the preset's schedule)
    max_iter: int | None = None


_SINGLE_MAP = {**LADDER_BASE, "masks": False, "fpn": False}
LADDER: tuple[Rung, ...] = (
    Rung(
        "rcnn",
        "R-CNN: selective search, warped 32 px crops, a CNN per crop",
        "the start: chapter 02's pipeline",
        "rcnn",
        RCNN_OVERRIDES,
    ),
    Rung(
        "fast_rcnn",
        "Fast R-CNN: the same proposals, shared features, RoIPool",
        "shared features and RoIPool instead of a CNN per warped crop",
        "selective_search",
        {**_SINGLE_MAP, "roi_op": "roipool"},
    ),
    Rung(
        "roialign",
        "+ RoIAlign",
        "RoIAlign instead of RoIPool",
        "selective_search",
        _SINGLE_MAP,
        changes={"roi_op": "roialign_avg"},
    ),
    Rung(
        "faster_rcnn",
        "Faster R-CNN: RPN proposals instead of selective search",
        "proposals from the detector's own RPN instead of selective search",
        "rpn",
        _SINGLE_MAP,
    ),
    Rung(
        "fpn",
        "+ FPN",
        "a feature pyramid (P2-P6) instead of the single stride-8 map",
        "rpn",
        {**LADDER_BASE, "masks": False},
        changes={"fpn": True},
        follows=("size_divisible",),
    ),
    Rung(
        "mask_rcnn",
        "Mask R-CNN: + the mask branch",
        "the mask branch",
        "rpn",
        dict(LADDER_BASE),
        changes={"masks": True},
    ),
    Rung(
        "mask_rcnn_long",
        f"Mask R-CNN, {LONG_MAX_ITER} iterations (the final model)",
        f"{LONG_MAX_ITER} iterations instead of the preset's",
        "rpn",
        dict(LADDER_BASE),
        max_iter=LONG_MAX_ITER,
    ),
)
RUNGS = {rung.name: rung for rung in LADDER}


def config_diff(before: Rung, after: Rung, preset: str = LADDER_PRESET) -> dict[str, tuple]:
    """The :class:`~rcnn_steps.detectors.config.DetectorConfig` fields two detector rungs'
    configs differ in: ``{field: (before, after)}``."""
    a = asdict(detector_config(preset, before.overrides))
    b = asdict(detector_config(preset, after.overrides))
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def rcnn_windows_per_iteration(preset: str = LADDER_PRESET) -> int:
    """R-CNN's windows per iteration under the budget rule: the detectors' images per
    batch times RoIs sampled per image (8 x 64 = 512 for ``cpu_mask``)."""
    return feeding(preset)["batch_size"] * detector_config(preset).roi_batch_size_per_image
