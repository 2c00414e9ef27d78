"""One rung of the ladder trained and scored, and the selective-search proposals its
first rungs read, made before the grid starts.

- :func:`run_rung`: one run of the ladder (the grid's ``runner``): R-CNN's rung by
  :func:`run_rcnn_setting`, every other rung by
  :func:`rcnn_steps.experiments.runner.run_setting`, on the data
  :func:`~rcnn_steps.experiments.datasets.resolve_root` finds;
- :func:`run_rcnn_setting`: R-CNN's rung (:func:`rcnn_steps.experiments.rcnn.train_rcnn`)
  under the budget rule (:mod:`rcnn_steps.experiments.ladder_rungs`), recorded with
  ``run_setting``'s fields;
- :func:`prepare_proposals`: the selective-search proposal caches of the R-CNN and Fast
  R-CNN rungs, made or extended before any run starts, so no run's wall-clock holds them
  and no two workers make them at once.

:mod:`rcnn_steps.experiments.ladder` re-exports them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rcnn_steps.experiments.datasets import book_root, resolve_root
from rcnn_steps.experiments.evolution import NUM_EVAL_IMAGES, evaluation_image_ids
from rcnn_steps.experiments.grid import RunSpec, _run_one, with_provenance
from rcnn_steps.experiments.ladder_rungs import LADDER_EVAL_IMAGES, rcnn_windows_per_iteration
from rcnn_steps.experiments.runner import (
    _covers,
    detector_config,
    load_datasets,
    schedule,
    selective_search_proposals,
    thread_count,
)

__all__ = ["prepare_proposals", "run_rcnn_setting", "run_rung"]


def run_rcnn_setting(
    name: str,
    overrides: dict[str, Any],
    seed: int,
    preset: str,
    max_iter: int | None = None,
    *,
    num_train_images: int | None = None,
    root: str | Path | None = None,
    num_eval_images: int | None = None,
    timing_threads: int | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """R-CNN's rung: :func:`rcnn_steps.experiments.rcnn.train_rcnn` under the budget rule
    (``preset``'s schedule, :func:`rcnn_windows_per_iteration` windows per iteration, a
    quarter foreground at the detectors' IoU), on the selective-search proposals of the
    train images, tested on the first ``num_eval_images`` val images. ``overrides`` are
    :class:`~rcnn_steps.experiments.rcnn.RCNNConfig` fields (the crop size, the CNN's
    width). Returns a record with :func:`rcnn_steps.experiments.runner.run_setting`'s
    fields."""
    import torch

    # local: start-up of ladder/ablations --help (R-CNN's module loads rcnn_steps.data)
    from rcnn_steps.experiments.rcnn import RCNNConfig, evaluate_detector, train_rcnn

    t0 = time.perf_counter()
    detector = detector_config(preset)
    sched = schedule(preset, max_iter)
    train_set, val_set = load_datasets(root)
    n_train = len(train_set) if num_train_images is None else min(num_train_images, len(train_set))
    eval_ids = evaluation_image_ids(val_set, num_eval_images or NUM_EVAL_IMAGES)
    train_props, _ = selective_search_proposals(train_set, "train", n_train, root)
    val_props, proposal_seconds = selective_search_proposals(val_set, "val", len(eval_ids), root)
    config = RCNNConfig(
        **{
            "num_train_images": n_train,
            "max_iter": sched["max_iter"],
            "batch_size": rcnn_windows_per_iteration(preset),
            "fg_fraction": detector.roi_positive_fraction,
            "fg_iou": detector.roi_fg_iou_thresh,
            "lr": sched["lr"],
            "seed": int(seed),
            **overrides,
        }
    )
    model, result = train_rcnn(
        train_set,
        train_props,
        config,
        device="cpu",
        out_dir=None if out_dir is None else str(out_dir),
        schedule=sched,
    )
    t1 = time.perf_counter()
    with thread_count(timing_threads):
        threads = torch.get_num_threads()
        ev = evaluate_detector(model, val_set, val_props, eval_ids, config)
    t2 = time.perf_counter()
    network_seconds = ev["classification_seconds_per_image"]
    return {
        "name": name,
        "seed": int(seed),
        "preset": preset,
        "method": "rcnn",
        "max_iter": sched["max_iter"],
        "overrides": json.loads(json.dumps(overrides)),
        "metrics": {k: round(float(v), 4) for k, v in ev["metrics"].items()},
        "rcnn_config": asdict(config),
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


def run_rung(spec: RunSpec) -> dict[str, Any]:
    """One run of the ladder (the grid's ``runner``): R-CNN's rung by
    :func:`run_rcnn_setting`, the others by
    :func:`rcnn_steps.experiments.runner.run_setting`, on the data :func:`resolve_root`
    finds; the record keeps ``spec`` as keyed."""
    here = replace(spec, root=resolve_root(spec.root))
    iters = schedule(spec.preset, spec.max_iter)["max_iter"]
    print(f"{spec.name}/seed{spec.seed}: started, {iters} iterations ({spec.key()}, "
          f"{time.strftime('%H:%M:%S')})", flush=True)  # fmt: skip
    if spec.method != "rcnn":
        record = _run_one(here)
    else:
        record = run_rcnn_setting(
            spec.name,
            dict(spec.overrides),
            spec.seed,
            spec.preset,
            spec.max_iter,
            num_train_images=spec.num_train_images,
            root=here.root,
            num_eval_images=spec.num_eval_images,
            timing_threads=spec.timing_threads,
            out_dir=spec.out_dir,
        )
    print(f"{spec.name}/seed{spec.seed}: {record['train_sec_per_iter']:.3f} s/iteration, "
          f"{record['wall_time_s']:.0f} s in all", flush=True)  # fmt: skip
    return with_provenance(spec, record)


def prepare_proposals(
    root: str | None,
    num_train_images: int | None = None,
    num_eval_images: int | None = LADDER_EVAL_IMAGES,
    log=print,
) -> dict[str, float]:
    """Make (or extend) the selective-search proposal caches the ladder's first rungs read,
    before any run starts, so no run's wall-clock holds them and no two workers make them
    at once: for the book's set, the train images beyond chapter 02's 400 go to the set's
    own cache beside the data; for any other set, both splits. Returns the seconds of
    selective search per image, by split, of the images it computed (empty if none)."""
    import numpy as np

    # local: start-up of ladder/ablations --help (rcnn_steps.data loads SciPy: 0.16 s)
    from rcnn_steps.data.proposals import load_proposals, make_proposals, proposals_path

    here = resolve_root(root)
    train_set, val_set = load_datasets(here)
    folder = Path(here) if here is not None else book_root()
    spent: dict[str, float] = {}
    for split, dataset, count in (
        ("train", train_set, num_train_images or len(train_set)),
        ("val", val_set, min(num_eval_images or len(val_set), len(val_set))),
    ):
        count = min(count, len(dataset))
        if root is None and _covers(proposals_path(split), dataset, count):
            continue
        path = folder / f"proposals_fast_{split}.npz"
        held: dict[int, Any] = {}
        if path.exists():
            try:
                held = load_proposals(path, dataset)
            except ValueError:  # made from other data: start again
                held = {}
        wanted = [int(i) for i in dataset.image_ids[:count]]
        if all(i in held for i in wanted):
            continue
        log(f"selective search: {count} {split} images of {folder.name} -> {path}")
        t0 = time.time()
        make_proposals(dataset, count, path)  # deterministic (seed 0): held ones come out equal
        with np.load(path) as data:
            spent[split] = float(np.mean(data["seconds"]))
        log(f"  {time.time() - t0:.0f} s, {spent[split]:.3f} s per image")
    return spent
