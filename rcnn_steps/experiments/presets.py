"""The detector presets, each defined once: one :class:`Preset` record per name in
:data:`PRESETS`, read by every road that trains or scores a preset.

A preset is four facts that go together:

- the **model**: a :class:`~rcnn_steps.detectors.config.DetectorConfig` constructor (the
  chapters teach them as class methods, :meth:`DetectorConfig.cpu_mask` and the others);
- the **schedule**: the :class:`~rcnn_steps.engine.TrainConfig` fields it trains with;
- the **feeding**: how its images reach the model (:class:`Feeding`);
- where it is **reported**: the chapter, the evolution table's row and the results file
  that ``python -m rcnn_steps evaluate --preset`` writes (book presets only).

The roads that read them: ``python -m rcnn_steps train`` and ``evaluate``
(:mod:`rcnn_steps.cli`), every grid and ladder run
(:func:`rcnn_steps.experiments.runner.run_setting`,
:class:`rcnn_steps.experiments.grid.RunSpec`),
:func:`rcnn_steps.experiments.runner.fit_few_images`, and chapter 05's ``train_config``
(:func:`rcnn_steps.detectors.faster_rcnn.train_config` delegates here). Change a preset here and
every one of them sees the change.

Functions: :func:`preset` (the record by name), :func:`detector_config`,
:func:`schedule` (shortened to any ``max_iter`` with the same shape),
:func:`train_config`, :func:`feeding`, :func:`evaluated_presets`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from rcnn_steps.detectors.config import DetectorConfig, flat_overrides
from rcnn_steps.engine import TrainConfig

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

#: The fields a schedule may set: TrainConfig's, less those each run sets for itself.
_RUN_FIELDS = ("seed", "device", "out_dir", "overwrite", "progress", "eval_every",
               "checkpoint_every")  # fmt: skip
SCHEDULE_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in _RUN_FIELDS
)


@dataclass(frozen=True)
class Feeding:
    """How a preset's images reach the model, in training and at test time.

    Read by both roads that train a preset: ``python -m rcnn_steps train``
    (:mod:`rcnn_steps.cli`, where ``--batch-size`` and ``--flip`` may override it) and
    :func:`rcnn_steps.experiments.runner.run_setting` (``evaluate``, every grid and ladder
    run). What the two still do differently is not the preset's: ``train`` under
    ``torchrun`` gives each process its share of the images (a ``DistributedSampler``) and
    may load them in ``--loader-workers`` processes (which changes the draws of the random
    flips and sizes, made in the workers; nothing else); a grid trains on its first
    ``num_train_images``.
    """

    #: images per batch (per process under torchrun)
    batch_size: int = 8
    #: the shorter side in training, drawn per image when there are several; None: the
    #: images as they are (the book's 128 px)
    min_sizes: tuple[int, ...] | None = None
    #: the shorter side at test time (detections are mapped back to the image's pixels)
    test_size: int | None = None
    #: the longer side at most, in training and at test time
    max_size: int | None = None
    #: random horizontal flips in training
    flip: bool = False

    def __post_init__(self) -> None:
        if self.min_sizes is not None:
            object.__setattr__(self, "min_sizes", tuple(int(s) for s in self.min_sizes))
        if self.batch_size < 1:
            raise ValueError(f"Feeding: batch_size must be at least 1, got {self.batch_size}")

    @property
    def resizes(self) -> bool:
        """Whether the images are resized (in training or at test time)."""
        return bool(self.min_sizes) or self.test_size is not None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``run.json``'s ``"feeding"``)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Preset:
    """One preset, defined once: its model, schedule, feeding and where it is reported."""

    #: the name (``--preset NAME``)
    name: str
    #: builds the model's config from overrides: ``model(**overrides) -> DetectorConfig``
    model: Callable[..., DetectorConfig]
    #: :class:`~rcnn_steps.engine.TrainConfig` fields (:data:`SCHEDULE_FIELDS`); only the
    #: fields given, as a grid run's cache key hashes them
    #: (:meth:`rcnn_steps.experiments.grid.RunSpec.key`): adding a field at its default
    #: value would change every key of the preset
    schedule: Mapping[str, Any]
    #: one line: what the preset is for
    description: str
    feeding: Feeding = field(default_factory=Feeding)
    #: the book chapter whose detector this is (``evaluate`` writes its row), or None
    chapter: str | None = None
    #: the evolution table's name of the detector (:func:`rcnn_steps.experiments.evolution.add_row`)
    detector: str | None = None
    #: the results file ``evaluate --preset NAME`` writes in ``results/``; None: a preset
    #: ``evaluate`` does not offer
    results_file: str | None = None
    #: seconds one grid run takes at the full schedule on one core of the reference machine
    #: (a 2-core AMD EPYC, one thread per worker, both busy): the plan's estimate before
    #: the cache holds runs of the preset to measure from (:func:`rcnn_steps.experiments.grid.
    #: estimate_seconds`); None: 600 s
    grid_run_seconds: float | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.schedule) - set(SCHEDULE_FIELDS))
        if unknown:
            raise ValueError(
                f"preset {self.name!r}: schedule fields {unknown} are not TrainConfig fields a "
                f"schedule sets; use {list(SCHEDULE_FIELDS)}"
            )
        if "max_iter" not in self.schedule:
            raise ValueError(f"preset {self.name!r}: the schedule needs a max_iter")
        reported = (self.chapter, self.detector, self.results_file)
        if any(v is None for v in reported) and any(v is not None for v in reported):
            raise ValueError(
                f"preset {self.name!r}: give chapter, detector and results_file together "
                f"(a reported preset) or none of them, got {reported}"
            )
        # read-only, so a record cannot be changed through a schedule someone was handed
        object.__setattr__(self, "schedule", MappingProxyType(dict(self.schedule)))


# ----------------------------------------------------------------------------------------
# The schedules' provenance (they are the records' ``schedule`` below)

#: The book's box presets, for batch 8 of 128 px images. Measured (cpu preset, one seed,
#: first 50 val images, the COCO loader, 2 threads on a shared 2-core CPU): box AP / AP50
#: 0.19 / 0.44 after 750 iterations, 0.34 / 0.63 after 1500, in 425 s (~0.28 s per
#: iteration, evaluation and loading included, while other jobs loaded the machine; on the
#: same machine when quiet, 84 s: ~0.056 s per iteration, box AP / AP50 0.337 / 0.662).
#: The earlier cpu preset (stride 16, width 16, lr 0.02) reached 0.04 / 0.10 after 600
#: iterations, and torchvision's FasterRCNN built from the same parts did no better
#: (0.013 / 0.037 vs our 0.012 / 0.030 after 200).
_CI_SCHEDULE = dict(max_iter=30, lr=0.02, warmup_steps=5, log_every=10)
_CPU_SCHEDULE = dict(max_iter=1500, lr=0.05, warmup_steps=50, lr_steps=(1200,), log_every=50)
#: Mask R-CNN (chapter 07) on the same budget, with the gradient's norm clipped at 10: the
#: keypoint head's loss (a softmax over 56 x 56 = 3136 cells, ~8 at the start) made the
#: first steps after the warm-up diverge at the cpu preset's lr 0.05 (NaN at step 55 of the
#: cpu_mask preset, also with a 200-step warm-up, and never with the clip; the gradient's
#: norm is 10-15 at the end of the warm-up and ~4 by step 250). lr 0.02 trained stably but
#: the keypoint loss barely moved in 250 steps (7.65 -> 7.49).
_MASK_CLIP = dict(grad_clip_norm=10.0)
#: The GPU presets (synthetic set at 512 px, 8 images per batch on one GPU): a reasoned
#: schedule that no GPU has run yet (no GPU was at hand while it was written).
_GPU_SCHEDULE = dict(
    max_iter=6000, lr=0.02, warmup_steps=500, lr_steps=(4500,), grad_clip_norm=10.0, log_every=50
)
#: The GPU presets' images: the 512 px synthetic set drawn at a shorter side of 448-576 in
#: training (multi-scale, as Detectron's), 512 at test time.
_GPU_FEEDING = Feeding(
    batch_size=8, min_sizes=(448, 480, 512, 544, 576), test_size=512, max_size=960, flip=True
)

_FASTER = dict(chapter="04", detector="Faster R-CNN", results_file="faster_rcnn.json")
_MASK = dict(chapter="07", detector="Mask R-CNN", results_file="mask_rcnn.json")

#: Every detector preset by name.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "ci", DetectorConfig.ci, _CI_SCHEDULE,
            "seconds-scale Faster R-CNN for tests and shape cells", **_FASTER,
            grid_run_seconds=30.0,
        ),
        Preset(
            "cpu", DetectorConfig.cpu, _CPU_SCHEDULE,
            "chapter 04's Faster R-CNN on a 2-core laptop (minutes)", **_FASTER,
            grid_run_seconds=300.0,  # box runs of 1500 iterations took 120-450 s (2026-11-27)
        ),
        Preset(
            # on the cpu preset's schedule: single map vs pyramid on the same budget
            "cpu_fpn", DetectorConfig.cpu_fpn, _CPU_SCHEDULE,
            "chapter 05's cpu preset with a feature pyramid, on the same schedule",
            chapter="05", detector="Faster R-CNN + FPN", results_file="faster_rcnn_fpn.json",
            grid_run_seconds=600.0,
        ),
        Preset(
            "ci_mask", DetectorConfig.ci_mask, {**_CI_SCHEDULE, **_MASK_CLIP},
            "the ci preset with slim mask and keypoint branches", **_MASK,
            grid_run_seconds=45.0,
        ),
        Preset(
            "cpu_mask", DetectorConfig.cpu_mask, {**_CPU_SCHEDULE, **_MASK_CLIP},
            "chapter 07's Mask R-CNN (cpu_fpn + RoIAlign, masks, keypoints) on a laptop",
            **_MASK, grid_run_seconds=900.0,
        ),
        Preset(
            "gpu", DetectorConfig.gpu, _GPU_SCHEDULE,
            "ResNet-50-FPN Faster R-CNN for the 512 px synthetic set on one GPU",
            feeding=_GPU_FEEDING,
        ),
        Preset(
            "gpu_mask", DetectorConfig.gpu_mask, _GPU_SCHEDULE,
            "the gpu preset as Mask R-CNN (RoIAlign, mask and keypoint heads)",
            feeding=_GPU_FEEDING,
        ),
        Preset(
            # The paper's COCO schedule (section 3.1): lr 0.02 for 16 images per batch,
            # divided by 10 at 120k of 160k iterations, momentum 0.9, weight decay 1e-4 (the
            # engine's defaults), with torchvision's reference warm-up of 1000 iterations;
            # 2 images per GPU on 8 GPUs, resized to 800 (longer side at most 1333).
            "coco_mask", DetectorConfig.coco_mask,
            dict(max_iter=160_000, lr=0.02, warmup_steps=1000, lr_steps=(120_000,),
                 log_every=100),
            "the paper's ResNet-50-FPN Mask R-CNN on COCO 2017 (8 GPUs)",
            feeding=Feeding(batch_size=2, min_sizes=(800,), test_size=800, max_size=1333,
                            flip=True),
        ),
    )
}  # fmt: skip


# ----------------------------------------------------------------------------------------
# Reading the records


def preset(name: str) -> Preset:
    """The :class:`Preset` named ``name`` (a ValueError naming the choices otherwise)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; one of {sorted(PRESETS)}.")
    return PRESETS[name]


def detector_config(name: str, **overrides: Any) -> DetectorConfig:
    """The preset's :class:`~rcnn_steps.detectors.config.DetectorConfig`, with ``overrides``
    (by flat field name or by section: ``**{"mask.loss": "softmax"}``)."""
    return preset(name).model(**flat_overrides(overrides))


def schedule(name: str, max_iter: int | None = None) -> dict[str, Any]:
    """The preset's training schedule (its record's ``schedule``, as a new dict),
    shortened to ``max_iter`` when given: the learning-rate milestones scale with it (the
    ``cpu`` preset's drop at 1200 of 1500 becomes 480 of 600) and the warm-up is capped at
    half the run, so a short run keeps the schedule's shape."""
    base = dict(preset(name).schedule)
    if max_iter is None or max_iter == base["max_iter"]:
        return base
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    factor = max_iter / base["max_iter"]
    steps = tuple(s for s in (round(s * factor) for s in base.get("lr_steps", ())) if s > 0)
    return dict(
        base,
        max_iter=max_iter,
        lr_steps=steps,
        warmup_steps=min(base.get("warmup_steps", 0), max_iter // 2),
        log_every=min(base.get("log_every", 20), max_iter),
    )


def train_config(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`~rcnn_steps.engine.TrainConfig` of the preset's schedule, with
    ``overrides`` (any TrainConfig field, taken as given: ``max_iter`` here does not
    rescale the milestones, :func:`schedule` does)."""
    return TrainConfig(**{**preset(name).schedule, **overrides})


def feeding(name: str) -> dict[str, Any]:
    """How the preset is fed (its record's :class:`Feeding` as a dict: ``batch_size,
    min_sizes, test_size, max_size, flip``)."""
    return preset(name).feeding.as_dict()


def evaluated_presets() -> list[str]:
    """The presets ``python -m rcnn_steps evaluate`` offers: those with a results file."""
    return sorted(name for name, p in PRESETS.items() if p.results_file is not None)
