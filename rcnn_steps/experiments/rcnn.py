"""Chapter 02's experiment: R-CNN trained, evaluated and recorded.

The detector (warping with context, labels and regression targets, :class:`RCNNNet`, its
loss, the balanced window batches, test-time detection) is :mod:`rcnn_steps.detectors.rcnn`;
this module is how the chapter (and the ladder's R-CNN rung) runs it:

- :class:`RCNNConfig` and :data:`PRESETS`: every knob of a run (images, updates, batch,
  crop size, CNN width, IoUs, proposals at test time), ``ci`` for the notebook and tests,
  ``cpu`` for the library command; :func:`preset_config` changes only the crop size;
- :func:`train_rcnn`: training through :func:`rcnn_steps.engine.train`;
- :func:`evaluate_detector`: COCO box AP and the classification seconds per image;
- ``python -m rcnn_steps.rcnn proposals | evaluate`` (:func:`main`): caches selective
  search's proposals of a split, or trains, evaluates, writes ``results/rcnn.json`` and
  adds the "R-CNN" row of the evolution table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcnn_steps.data import synth_datasets
from rcnn_steps.data.proposals import load_proposals, make_proposals, proposals_path
from rcnn_steps.detectors.rcnn import (
    RCNN_BOX_CODER_WEIGHTS,
    RCNNNet,
    WindowBatches,
    detect,
    rcnn_loss,
    training_windows,
)
from rcnn_steps.detectors.selective_search import selective_search
from rcnn_steps.engine import TrainConfig, train
from rcnn_steps.evaluation import coco_evaluate, detections_to_coco
from rcnn_steps.experiments.evolution import NUM_EVAL_IMAGES, add_row, evaluation_image_ids
from rcnn_steps.ops import BoxCoder
from rcnn_steps.utils import (
    add_debug_argument,
    results_dir,
    run_command,
    seed_everything,
    set_threads,
    write_results,
)

__all__ = [
    "PRESETS",
    "RCNNConfig",
    "evaluate_detector",
    "main",
    "preset_config",
    "train_rcnn",
]


@dataclass
class RCNNConfig:
    """Every knob of the R-CNN run (``python -m rcnn_steps.rcnn evaluate --preset ...``)."""

    num_train_images: int = 400  #: training images (their proposals come from the cache)
    max_iter: int = 3000  #: optimizer updates (mini-batches)
    batch_size: int = 128  #: windows per mini-batch (the paper's 128)
    fg_fraction: float = 0.25  #: positives per batch (the paper's 32 of 128)
    crop_size: int = 32  #: warped crop side (the paper's 227)
    width: int = 16  #: channels of the first conv layer
    lr: float = 0.05
    fg_iou: float = 0.5  #: positives: IoU >= 0.5 (fine-tuning labels)
    reg_iou: float = 0.6  #: box regression: IoU >= 0.6
    max_proposals: int = 2000  #: proposals per image at test time (the paper's ~2000)
    nms_threshold: float = 0.3
    seed: int = 0

    def display(self) -> None:
        items = asdict(self)
        width = max(len(k) for k in items)
        print(type(self).__name__)
        for key, value in items.items():
            print(f"  {key:<{width}}  {value!r}")


#: "ci": about a minute (notebook, tests of the command); "cpu": about 10 minutes on 2 cores.
PRESETS = {
    "ci": RCNNConfig(num_train_images=100, max_iter=300, batch_size=64),
    "cpu": RCNNConfig(),
}


def preset_config(preset: str, crop_size: int | None = None) -> RCNNConfig:
    """The preset's :class:`RCNNConfig`, with another warped crop side ``S`` if given: the
    controlled test of how much of R-CNN's accuracy its crops' resolution buys (chapter 08:
    same proposals, images and schedule, only ``S`` changes). ``S`` must be a multiple of 8
    (the CNN pools three times)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]
    if crop_size is None or crop_size == config.crop_size:
        return config
    if crop_size < 8 or crop_size % 8:
        raise ValueError(
            f"crop_size must be a positive multiple of 8 (the CNN pools three times), got "
            f"{crop_size}"
        )
    return replace(config, crop_size=crop_size)


def train_rcnn(
    dataset,
    proposals: dict[int, torch.Tensor],
    config: RCNNConfig,
    device: str = "auto",
    progress: bool = False,
    out_dir: str | None = None,
    schedule: dict[str, Any] | None = None,
):
    """Train an :class:`RCNNNet` on the first ``config.num_train_images`` images of
    ``dataset`` through :func:`rcnn_steps.engine.train`. Returns (model, TrainResult).

    ``schedule`` (fields of :class:`~rcnn_steps.engine.TrainConfig`: ``max_iter, lr,
    warmup_steps, lr_steps, ...``) replaces R-CNN's own (``config.max_iter`` updates at
    ``config.lr``, a cosine decay after a short warm-up): the ladder of chapter 08 trains
    R-CNN on the same schedule as the detectors it is compared with."""

    seed_everything(config.seed)
    coder = BoxCoder(RCNN_BOX_CODER_WEIGHTS)
    ids = [i for i in dataset.image_ids[: config.num_train_images] if int(i) in proposals]
    if not ids:
        raise ValueError("no training image has cached proposals")
    windows = training_windows(dataset, proposals, ids, coder, config.fg_iou, config.reg_iou)
    if schedule is not None and schedule["max_iter"] != config.max_iter:
        raise ValueError(
            f"train_rcnn: schedule max_iter {schedule['max_iter']} != config.max_iter "
            f"{config.max_iter} (the window batches are drawn for config.max_iter updates)"
        )
    batches = WindowBatches(
        windows,
        config.max_iter,
        config.batch_size,
        config.fg_fraction,
        config.crop_size,
        config.seed,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=True)
    model = RCNNNet(dataset.num_classes, config.crop_size, config.width)
    own = dict(
        max_iter=config.max_iter,
        lr=config.lr,
        warmup_steps=min(50, config.max_iter // 10),
        schedule="cosine",
        log_every=max(1, config.max_iter // 10),
    )
    train_config = TrainConfig(
        **(own if schedule is None else dict(schedule)),
        seed=config.seed,
        device=device,
        progress=progress,
        out_dir=out_dir,
    )
    result = train(model, loader, train_config, loss_fn=rcnn_loss)
    return model, result


def evaluate_detector(
    model: RCNNNet,
    dataset,
    proposals: dict[int, torch.Tensor],
    image_ids: Sequence[int],
    config: RCNNConfig,
) -> dict[str, Any]:
    """COCO box AP (via :func:`rcnn_steps.evaluation.coco_evaluate`) of ``model`` on
    ``image_ids`` and the classification seconds per image (warp + CNN + NMS)."""

    coder = BoxCoder(RCNN_BOX_CODER_WEIGHTS)
    results, seconds = [], []
    for image_id in image_ids:
        image = dataset.load_image(image_id)
        props = proposals[int(image_id)][: config.max_proposals]
        t0 = time.perf_counter()
        det = detect(
            model, image, props, coder, config.crop_size, nms_threshold=config.nms_threshold
        )
        seconds.append(time.perf_counter() - t0)
        results += detections_to_coco(
            image_id, det["boxes"], det["scores"], det["labels"], dataset.label_to_category_id
        )
    gt = dict(dataset.coco.dataset)
    keep = set(int(i) for i in image_ids)
    gt["images"] = [im for im in gt["images"] if im["id"] in keep]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    metrics = coco_evaluate(gt, results)
    return {"metrics": metrics, "classification_seconds_per_image": float(np.mean(seconds))}


def _proposals_command(args) -> int:

    train, val = synth_datasets()
    dataset = train if args.split == "train" else val
    out = args.out or proposals_path(args.split, args.mode)
    t0 = time.time()
    info = make_proposals(dataset, args.num_images, out, args.mode, args.max_proposals, args.seed)
    print(
        f"wrote {out}: {info['num_images']} images, {info['mean_proposals']:.0f} proposals "
        f"per image, {time.time() - t0:.0f} s"
    )
    return 0


def _evaluate_command(args) -> int:

    started = time.time()
    config = args.config  # the preset, or another crop size (checked in main)
    set_threads(args.threads)
    train, val = synth_datasets()
    train_path, val_path = proposals_path("train"), proposals_path("val")
    eval_ids = evaluation_image_ids(val)
    for path, dataset, count in (
        (train_path, train, PRESETS["cpu"].num_train_images),
        (val_path, val, len(eval_ids)),
    ):
        try:
            load_proposals(path, dataset)
        except (FileNotFoundError, ValueError):  # missing or stale: make it (again)
            make_proposals(dataset, count, path)
    train_props, val_props = load_proposals(train_path, train), load_proposals(val_path, val)

    # proposals are timed again here, in this run, on the evaluation images
    proposal_seconds = []
    for image_id in eval_ids:
        image = val.load_image(image_id)
        t0 = time.perf_counter()
        selective_search(image, "fast", seed=0, max_proposals=config.max_proposals)
        proposal_seconds.append(time.perf_counter() - t0)

    seed_everything(config.seed)
    t0 = time.time()
    model, result = train_rcnn(train, train_props, config, progress=args.progress)
    train_seconds = time.time() - t0
    ev = evaluate_detector(model, val, val_props, eval_ids, config)
    metrics = ev["metrics"]
    prop_s = float(np.mean(proposal_seconds))
    cls_s = ev["classification_seconds_per_image"]
    results = {
        "preset": args.preset,
        "config": asdict(config),
        "num_eval_images": len(eval_ids),
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        "proposal_seconds_per_image": round(prop_s, 4),
        "classification_seconds_per_image": round(cls_s, 4),
        "seconds_per_image": round(prop_s + cls_s, 4),
        "mean_proposals_per_image": round(
            float(np.mean([min(len(val_props[int(i)]), config.max_proposals) for i in eval_ids])), 1
        ),
        "train_seconds": round(train_seconds, 1),
        **result.summary(),
    }
    write_results(args.out, results, preset=args.preset, seeds=[config.seed], started=started)
    if not args.no_evolution:
        add_row(
            "02",
            "R-CNN",
            {"AP": metrics["AP"], "AP50": metrics["AP50"]},
            prop_s + cls_s,
            notes=(
                f"selective search (fast) + warped {config.crop_size}px crops, small CNN from "
                f"scratch, preset {args.preset}"
            ),
            extra={
                "proposal_seconds_per_image": round(prop_s, 4),
                "classification_seconds_per_image": round(cls_s, 4),
            },
        )
    print(
        f"AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f}; s/image: proposals {prop_s:.3f} + "
        f"classification {cls_s:.3f}; wrote {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """``python -m rcnn_steps.rcnn proposals | evaluate ...`` (``prog``: the name its help
    and errors show; ``python -m rcnn_steps rcnn`` passes its own)."""
    parser = argparse.ArgumentParser(prog=prog or "python -m rcnn_steps.rcnn")
    sub = parser.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("proposals", help="cache selective search proposals of a split")
    pr.add_argument("--split", choices=("train", "val"), default="train")
    pr.add_argument("--num-images", type=int, default=None)
    pr.add_argument("--mode", default="fast")
    pr.add_argument("--max-proposals", type=int, default=2000)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out", type=Path, default=None)
    ev = sub.add_parser("evaluate", help="train, evaluate, write results and the table row")
    ev.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ev.add_argument("--out", type=Path, default=None, help="default results/rcnn.json")
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--progress", action="store_true")
    ev.add_argument("--no-evolution", action="store_true", help="do not add the table row")
    ev.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="warp to S x S crops instead of the preset's (a multiple of 8; needs --out, "
        "and adds no row to the evolution table)",
    )
    add_debug_argument(parser, pr, ev)
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        try:
            config = preset_config(args.preset, args.crop_size)
        except ValueError as err:
            parser.error(str(err))
        if config != PRESETS[args.preset]:
            if args.out is None:
                parser.error(
                    f"--crop-size {args.crop_size} changes the preset: name the results file "
                    "with --out (results/rcnn.json is the evolution table's R-CNN)"
                )
            args.no_evolution = True
        args.out = args.out or results_dir() / "rcnn.json"
        args.config = config
    if args.command == "proposals":
        if args.num_images is None:
            args.num_images = (
                PRESETS["cpu"].num_train_images if args.split == "train" else NUM_EVAL_IMAGES
            )
        return run_command(_proposals_command, args)
    return run_command(_evaluate_command, args)


if __name__ == "__main__":
    sys.exit(main())
