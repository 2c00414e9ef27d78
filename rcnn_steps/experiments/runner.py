"""Training and evaluating any detector of the book on a COCO-format folder: the top of
the library.

The models (:mod:`rcnn_steps.detectors.faster_rcnn`, :mod:`rcnn_steps.detectors.fast_rcnn`,
:mod:`rcnn_steps.detectors.mask_rcnn`) know how to compute losses and detections; the engine
(:mod:`rcnn_steps.engine`) knows how to take SGD steps; the evaluation module knows COCO
AP. This module puts them together, and everything that *runs* a detector goes through it:
the chapters' ``evaluate`` commands, the ablation grids
(:mod:`rcnn_steps.experiments.ablations`) and ``python -m rcnn_steps train`` on your own
data. It reads the presets from :mod:`rcnn_steps.experiments`; nothing below imports it.

- presets: each defined once, in its record (:mod:`rcnn_steps.experiments`), read here
  through :func:`detector_config` (a :class:`~rcnn_steps.detectors.config.DetectorConfig` by
  name, with overrides), :func:`schedule` (its training schedule) and :func:`feeding`;
- data (:mod:`rcnn_steps.experiments.run_data`, re-exported here): :func:`load_datasets`,
  the (train, val) pair of a folder laid out as the synthetic set (``train/``, ``val/``,
  ``annotations/instances_{train,val}.json``), and :func:`selective_search_proposals`;
- test time (:mod:`rcnn_steps.experiments.scoring`, re-exported here): :func:`detect`
  (one image at a time, as deployed: COCO result dicts with boxes, masks and keypoints as
  the model gives them, and seconds per image) and :func:`evaluate` (pycocotools' AP for
  each);
- :func:`run_setting`: train one detector and evaluate it, returning a JSON-able record
  (one run of a results file or of a grid);
- :func:`fit_few_images`: the first test of a detector that learns nothing (can it fit a
  handful of training images?);
- training on your own folder (``python -m rcnn_steps train``): :func:`config_for_data`
  (the preset's config fitted to the data's classes) and :func:`make_evaluator`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rcnn_steps.detectors.config import DetectorConfig, flat_overrides
from rcnn_steps.detectors.fast_rcnn import FastRCNN
from rcnn_steps.detectors.faster_rcnn import FasterRCNN
from rcnn_steps.engine import TrainConfig, all_gather_objects, process_rank
from rcnn_steps.experiments import PRESETS, feeding, schedule
from rcnn_steps.experiments import preset as preset_record
from rcnn_steps.experiments.evolution import NUM_EVAL_IMAGES, evaluation_image_ids
from rcnn_steps.experiments.run_data import (
    _covers,  # noqa: F401 (re-exported: its old home)
    check_splits,
    load_datasets,
    selective_search_proposals,
)
from rcnn_steps.experiments.scoring import (
    _keypoint_ap,  # noqa: F401 (re-exported: its old home)
    _resized_back,  # noqa: F401 (re-exported: rcnn_steps.cli.predict imports it from here)
    # run_setting and fit_few_images look these two up in this module, so a test that
    # replaces runner.detect or runner.evaluate reaches them
    detect,
    evaluate,
    keypoint_ap_of_noisy_truth,
    keypoint_errors,
    thread_count,
    trim_keypoints,
)
from rcnn_steps.modeling.keypoint_head import keypoint_counts_of
from rcnn_steps.utils import seed_everything

__all__ = [
    "METHODS",
    "PRESETS",
    "detect",
    "detector_config",
    "evaluate",
    "feeding",
    "fit_few_images",
    "keypoint_ap_of_noisy_truth",
    "keypoint_errors",
    "check_splits",
    "load_datasets",
    "run_setting",
    "schedule",
    "selective_search_proposals",
    "thread_count",
    "trim_keypoints",
]

# PRESETS (the records by name), schedule(preset, max_iter) and feeding(preset) are the
# experiments floor's, imported above: the chapters and tests import them from here.

#: How a run gets its proposals: its own RPN (Faster / Mask R-CNN) or selective search
#: (Fast R-CNN on chapter 02's cached proposals).
METHODS = ("rpn", "selective_search")


def detector_config(preset: str, overrides: dict[str, Any] | None = None) -> DetectorConfig:
    """The preset's :class:`DetectorConfig` (its record's model, :data:`PRESETS`) with
    ``overrides`` (a dict, as a grid's settings hold them), by flat field name or by
    section (``{"mask.loss": "softmax"}`` is ``{"mask_loss": "softmax"}``)."""
    return preset_record(preset).model(**flat_overrides(overrides or {}))


# ----------------------------------------------------------------------------------------
# One run: train, then evaluate


def run_setting(
    name: str,
    overrides: dict[str, Any],
    seed: int,
    preset: str,
    max_iter: int | None = None,
    *,
    method: str = "rpn",
    num_train_images: int | None = None,
    root: str | Path | None = None,
    batch_size: int | None = None,
    num_eval_images: int | None = None,
    device: str = "auto",
    progress: bool = False,
    timing_threads: int | None = None,
    flip: bool | None = None,
    model_builder: Callable[[DetectorConfig], torch.nn.Module] | None = None,
    out_dir: str | Path | None = None,
    memory_format: str = "contiguous",
) -> dict[str, Any]:
    """Train one detector (``preset``'s config with ``overrides``, seeded by ``seed``) on
    the train split of ``root`` (default: the book's synthetic set) with
    :func:`rcnn_steps.engine.train`, and evaluate it on the first ``num_eval_images``
    val images (default :data:`rcnn_steps.experiments.evolution.NUM_EVAL_IMAGES`): COCO box AP, and
    mask and keypoint AP when the config has those branches.

    ``method="rpn"`` trains a :class:`~rcnn_steps.detectors.faster_rcnn.FasterRCNN` (with its mask
    and keypoint branches if the config turns them on); ``method="selective_search"`` a
    :class:`~rcnn_steps.detectors.fast_rcnn.FastRCNN` with the same config on selective-search
    proposals (:func:`selective_search_proposals`). ``num_train_images`` restricts
    training to the first images of the train set (default: all). The images are fed as
    the preset's record says (:func:`feeding`: images per batch, resizing in training and
    at test time, random horizontal flips), as ``python -m rcnn_steps train`` feeds them;
    ``batch_size`` and ``flip`` override the record's. Selective-search proposals are
    cached at the images' own size, so ``method="selective_search"`` refuses a preset
    that resizes them. ``timing_threads`` sets torch's CPU thread count while the val
    images are detected and timed. ``model_builder(config)`` replaces the model (e.g.
    :func:`rcnn_steps.detectors.mask_rcnn.torchvision_mask_rcnn` for a baseline trained the same
    way); ``out_dir`` keeps the run's checkpoint and ``metrics.jsonl``;
    ``memory_format`` is :class:`~rcnn_steps.engine.TrainConfig`'s (``"channels_last"``
    trains faster on CPU, equal to float rounding).

    Returns a JSON-able dict: ``name, seed, preset, method, max_iter, overrides,
    metrics`` (box; rounded to 4 digits), ``segm_metrics`` / ``keypoint_metrics`` (with
    those branches; with keypoints also ``keypoint_errors``, :func:`keypoint_errors`),
    ``num_train_images, num_eval_images, network_seconds_per_image,
    proposal_seconds_per_image`` (selective search's, from the cache; 0 for the RPN),
    ``seconds_per_image``, ``timing_threads``, ``wall_time_s``, ``train_seconds,
    eval_seconds`` and the :meth:`~rcnn_steps.engine.TrainResult.summary` fields.
    """
    # local: start-up of ladder/ablations --help (rcnn_steps.data loads SciPy: 0.16 s);
    # train is read at call time, where tests/test_presets.py replaces the engine's
    from rcnn_steps.data import collate_fn
    from rcnn_steps.engine import train

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {list(METHODS)}.")
    t0 = time.perf_counter()
    config = detector_config(preset, overrides)
    feed = preset_record(preset).feeding
    batch_size = feed.batch_size if batch_size is None else batch_size
    flip = feed.flip if flip is None else flip
    if method == "selective_search" and feed.resizes:
        raise ValueError(
            f"preset {preset!r} resizes its images (min_sizes {feed.min_sizes}, test_size "
            f"{feed.test_size}) and selective-search proposals are cached at the images' own "
            "size: use method='rpn', or a preset that feeds the images as they are"
        )
    masks = config.masks and method == "rpn"
    train_set, val_set = load_datasets(
        root, masks=masks, flip=flip, min_sizes=feed.min_sizes, max_size=feed.max_size
    )
    n_train = len(train_set) if num_train_images is None else min(num_train_images, len(train_set))
    eval_ids = evaluation_image_ids(val_set, num_eval_images or NUM_EVAL_IMAGES)
    train_cfg = TrainConfig(
        **schedule(preset, max_iter),
        seed=seed,
        device=device,
        progress=progress,
        out_dir=None if out_dir is None else str(out_dir),
        memory_format=memory_format,
    )
    seed_everything(seed)
    if method == "rpn":
        model = (model_builder or FasterRCNN)(config)
        data = torch.utils.data.Subset(train_set, range(n_train))
        loader = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=True, collate_fn=collate_fn
        )
        result = train(model, loader, train_cfg)
        val_proposals, proposal_seconds = None, 0.0
    else:
        # local: start-up of ladder/ablations --help (selective search loads SciPy, scikit-image)
        from rcnn_steps.experiments.fast_rcnn import (
            ProposalDataset,
            collate_proposals,
            proposal_detection_loss,
        )

        train_props, _ = selective_search_proposals(train_set, "train", n_train, root)
        val_proposals, proposal_seconds = selective_search_proposals(
            val_set, "val", len(eval_ids), root
        )
        model = FastRCNN(config)
        data = ProposalDataset(train_set, train_props, flip=flip)
        loader = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=True, collate_fn=collate_proposals
        )
        result = train(model, loader, train_cfg, loss_fn=proposal_detection_loss)
    t1 = time.perf_counter()
    with thread_count(timing_threads):
        threads = torch.get_num_threads()
        detections, network_seconds = detect(
            model, val_set, eval_ids, val_proposals, test_size=feed.test_size,
            max_size=feed.max_size,
        )  # fmt: skip
    metrics = evaluate(val_set, eval_ids, detections)
    t2 = time.perf_counter()
    record = {
        "name": name,
        "seed": int(seed),
        "preset": preset,
        "method": method,
        "max_iter": train_cfg.max_iter,
        "overrides": json.loads(json.dumps(overrides)),
        "metrics": metrics["bbox"],
    }
    if "segm" in metrics:
        record["segm_metrics"] = metrics["segm"]
    if "keypoints" in metrics:
        record["keypoint_metrics"] = metrics["keypoints"]
        record["keypoint_errors"] = keypoint_errors(
            val_set, eval_ids, detections, config.heatmap_size
        )
    record.update(
        {
            "num_train_images": n_train,
            "num_eval_images": len(eval_ids),
            "network_seconds_per_image": round(network_seconds, 4),
            "proposal_seconds_per_image": round(proposal_seconds, 4),
            "seconds_per_image": round(network_seconds + proposal_seconds, 4),
            "timing_threads": threads,
            "wall_time_s": round(t2 - t0, 2),
            "train_seconds": round(t1 - t0, 2),
            "eval_seconds": round(t2 - t1, 2),
            **result.summary(),
        }
    )
    return record


def fit_few_images(
    preset: str,
    overrides: dict[str, Any] | None = None,
    *,
    num_images: int = 16,
    max_iter: int = 300,
    class_name: str | None = None,
    root: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The first test of a detector that learns nothing: can it fit a handful of images?

    Trains ``preset``'s detector (with ``overrides``, seeded by ``seed``) on the first
    ``num_images`` train images of ``root`` that hold an object of ``class_name`` (None:
    the first images), for ``max_iter`` iterations of the preset's schedule shortened as
    :func:`schedule` does, in batches of the preset's batch size (at most ``num_images``),
    the images as they are (no flips, no resizing: the same images are then scored), then
    evaluates it on the *same* images. A model that cannot
    fit them has a defect (targets, loss, decoding); one that fits them but scores
    nothing on the val split lacks data or training, not code.

    Returns ``{"image_ids", "max_iter", "final_losses", "loss_history", "metrics"}``,
    ``metrics`` as :func:`evaluate` gives them (box AP, and mask and keypoint AP with
    those branches), on the training images."""
    # local: start-up of ladder/ablations --help (rcnn_steps.data loads SciPy: 0.16 s);
    # train is read at call time, where tests/test_presets.py replaces the engine's
    from rcnn_steps.data import collate_fn
    from rcnn_steps.engine import train

    if num_images < 1:
        raise ValueError(f"fit_few_images: num_images must be at least 1, got {num_images}")
    config = detector_config(preset, overrides)
    train_set, _ = load_datasets(root, masks=config.masks)
    if class_name is not None and class_name not in train_set.class_names[1:]:
        raise ValueError(
            f"fit_few_images: no class {class_name!r} in this set; its classes are "
            f"{train_set.class_names[1:]}"
        )
    chosen = []
    for index, image_id in enumerate(train_set.image_ids):
        if class_name is not None:
            labels = {train_set.coco.cats[a["category_id"]]["name"]
                      for a in train_set.coco.imgToAnns.get(image_id, [])}  # fmt: skip
            if class_name not in labels:
                continue
        chosen.append(index)
        if len(chosen) == num_images:
            break
    if len(chosen) < num_images:
        raise ValueError(
            f"fit_few_images: only {len(chosen)} train images hold a {class_name!r}; "
            f"ask for at most that many"
        )
    seed_everything(seed)
    model = FasterRCNN(config)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(train_set, chosen),
        batch_size=min(feeding(preset)["batch_size"], num_images),
        shuffle=True,
        collate_fn=collate_fn,
    )
    train_cfg = TrainConfig(**schedule(preset, max_iter), seed=seed, progress=False)
    result = train(model, loader, train_cfg)
    image_ids = [train_set.image_ids[i] for i in chosen]
    found, _ = detect(model, train_set, image_ids)
    return {
        "image_ids": image_ids,
        "max_iter": train_cfg.max_iter,
        **{k: v for k, v in result.summary().items() if k != "train_sec_per_iter"},
        "metrics": evaluate(train_set, image_ids, found),
    }


# ----------------------------------------------------------------------------------------
# Training on any COCO-format folder (python -m rcnn_steps train)


#: The :class:`DetectorConfig` fields :func:`config_for_data` takes from the data (its
#: categories); an override may repeat them, not change them.
DATA_FIELDS = ("num_classes", "keypoint_counts")


def config_for_data(
    preset: str, dataset, overrides: dict[str, Any] | None = None
) -> DetectorConfig:
    """The preset's config fitted to a dataset: ``num_classes`` its categories,
    ``keypoint_counts`` its categories' keypoint sets (:func:`rcnn_steps.modeling.keypoint_head.
    keypoint_counts_of`), and the keypoint branch off when no category has keypoints;
    ``overrides`` last. An override of :data:`DATA_FIELDS` that differs from the data,
    or ``keypoints=True`` on data without keypoints, is a ValueError saying what the data
    has (a model with the wrong number of classes would train on wrong labels)."""
    overrides = flat_overrides(overrides or {})  # DATA_FIELDS are checked by flat name
    check_data_overrides(dataset, overrides)
    counts = keypoint_counts_of(dataset.categories)
    fitted: dict[str, Any] = dict(num_classes=dataset.num_classes, keypoint_counts=counts)
    if not any(counts):
        fitted["keypoints"] = False
    return detector_config(preset, {**fitted, **overrides})


def check_data_overrides(dataset, overrides: dict[str, Any]) -> None:
    """Refuse (ValueError) overrides that contradict ``dataset``: a value of
    :data:`DATA_FIELDS` other than the data's, or ``keypoints=True`` where no category
    has keypoints. The message says what the data has."""
    counts = keypoint_counts_of(dataset.categories)
    fitted = dict(num_classes=dataset.num_classes, keypoint_counts=counts)
    names = ", ".join(c["name"] for c in dataset.categories)
    for name in DATA_FIELDS:
        if name in overrides and _as_stored(overrides[name]) != _as_stored(fitted[name]):
            raise ValueError(
                f"{name}={_as_stored(overrides[name])} does not fit the data: it has "
                f"{dataset.num_classes} classes ({names}) with keypoint counts "
                f"{_as_stored(counts)}; {' and '.join(DATA_FIELDS)} are set from the data, "
                "leave them out of the overrides"
            )
    if overrides.get("keypoints") is True and not any(counts):
        raise ValueError(
            f"keypoints=True: no class of the data ({names}) has keypoints to learn; "
            "leave keypoints out of the overrides (it is turned off for such data)"
        )


def _as_stored(value: Any) -> Any:
    """A field's value as a config stores it (a list or tuple of counts: a tuple)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def make_evaluator(
    dataset,
    image_ids: Sequence[int],
    *,
    test_size: int | None = None,
    max_size: int | None = None,
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """An ``evaluate_fn`` for :func:`rcnn_steps.engine.train`: COCO AP of boxes (and masks,
    keypoints) on ``image_ids``, flattened to ``{"bbox/AP": ..., "segm/AP50": ...}``.
    Under several processes each detects its share of the images, and the detections are
    gathered before pycocotools scores them (once, in every process, with the same
    result)."""

    def evaluate_fn(model: torch.nn.Module) -> dict[str, float]:
        rank, world = process_rank()
        mine = list(image_ids)[rank::world]
        found, seconds = detect(model, dataset, mine, test_size=test_size, max_size=max_size)
        everyone = all_gather_objects((found, seconds))
        results = [r for part, _ in everyone for r in part]
        metrics = evaluate(dataset, image_ids, results)
        flat = {f"{kind}/{name}": v for kind, m in metrics.items() for name, v in m.items()}
        flat["seconds_per_image"] = round(sum(s for _, s in everyone) / len(everyone), 4)
        return flat

    return evaluate_fn
