"""Chapter 03's experiment: Fast R-CNN trained and evaluated on cached proposals, and
recorded.

The detector (one backbone pass, RoIPool of external proposals, the multi-task head) is
:mod:`rcnn_steps.detectors.fast_rcnn`; this module is how the chapter (and
:func:`rcnn_steps.experiments.runner.run_setting`'s selective-search method) runs it:

- :class:`ProposalDataset` and :func:`collate_proposals`: images, their cached proposals
  and targets, with the paper's random flips;
- :class:`FastRCNNRun` and :data:`PRESETS`: every knob of a run (model, schedule, data),
  ``ci`` for the chapter's cell and tests, ``cpu`` for the library command;
- :func:`train_fast_rcnn` (through :func:`rcnn_steps.engine.train` with
  :func:`proposal_detection_loss`) and :func:`evaluate_fast_rcnn` (COCO box AP and the
  network's seconds per image);
- ``python -m rcnn_steps.fast_rcnn evaluate`` (:func:`main`): trains, evaluates, writes
  ``results/fast_rcnn.json`` and adds the "Fast R-CNN" row of the evolution table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rcnn_steps.detectors.config import DetectorConfig
from rcnn_steps.detectors.fast_rcnn import FastRCNN
from rcnn_steps.detectors.selective_search import selective_search
from rcnn_steps.engine import TrainConfig, train
from rcnn_steps.evaluation import coco_evaluate, detections_to_coco, subset_ground_truth
from rcnn_steps.experiments.evolution import add_evaluate_arguments, add_row, evaluation_image_ids
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
    "FastRCNNRun",
    "ProposalDataset",
    "collate_proposals",
    "evaluate_fast_rcnn",
    "main",
    "proposal_detection_loss",
    "train_fast_rcnn",
]


class ProposalDataset(torch.utils.data.Dataset):
    """``(image, proposals, target)`` for the images of ``dataset`` that have proposals.

    Args:
        dataset: a :class:`~rcnn_steps.data.CocoDataset`.
        proposals: ``{image_id: (P, 4)}``, e.g. :func:`rcnn_steps.data.proposals.load_proposals`.
        image_ids: the images to use (default: every image of ``dataset`` in ``proposals``,
            in the dataset's order); ids without proposals are skipped.
        max_proposals: keep the first (highest-ranked) proposals of each image.
        cache: keep the decoded images and targets in memory (a few hundred 128 px
            images are tens of MB) so epochs after the first read no files.
        flip: flip each item horizontally with probability 0.5 (image, proposals and
            boxes together; drawn from torch's global generator, which
            :func:`rcnn_steps.engine.train` seeds).

    Targets hold only ``boxes`` and ``labels`` (what the box branch trains on).
    """

    def __init__(
        self,
        dataset,
        proposals: Mapping[int, Tensor],
        image_ids: Sequence[int] | None = None,
        max_proposals: int = 2000,
        cache: bool = True,
        flip: bool = False,
    ) -> None:
        ids = dataset.image_ids if image_ids is None else image_ids
        self.image_ids = [int(i) for i in ids if int(i) in proposals]
        if not self.image_ids:
            raise ValueError("ProposalDataset: no image has proposals")
        self.dataset = dataset
        self.proposals = proposals
        self.max_proposals = max_proposals
        self._cache: dict[int, tuple] | None = {} if cache else None
        self.flip = flip

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        image_id = self.image_ids[index]
        if self._cache is not None and image_id in self._cache:
            image, target = self._cache[image_id]
        else:
            image = self.dataset.load_image(image_id)
            full = self.dataset.load_target(image_id, image.shape[1], image.shape[2])
            target = {"boxes": full["boxes"], "labels": full["labels"]}
            if self._cache is not None:
                self._cache[image_id] = (image, target)
        proposals = self.proposals[image_id][: self.max_proposals]
        if self.flip and torch.rand(()).item() < 0.5:
            width = image.shape[-1]
            image = image.flip(-1)
            proposals = _flip_boxes(proposals, width)
            target = {"boxes": _flip_boxes(target["boxes"], width), "labels": target["labels"]}
        return image, proposals, target


def _flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """xyxy boxes of an image mirrored left to right: ``x -> width - x``."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def collate_proposals(batch: list) -> tuple[list, list, list]:
    """Batch :class:`ProposalDataset` items as three lists (images, proposals, targets)."""
    images, proposals, targets = zip(*batch, strict=True)
    return list(images), list(proposals), list(targets)


def proposal_detection_loss(model: nn.Module, batch: Any) -> dict[str, Tensor]:
    """The ``loss_fn`` of :func:`rcnn_steps.engine.train` for :class:`FastRCNN`:
    ``model(images, proposals, targets)``."""
    images, proposals, targets = batch
    return model(images, proposals, targets)


@dataclass
class FastRCNNRun:
    """Every knob of one Fast R-CNN run: the model, the schedule and the data."""

    model: DetectorConfig = field(default_factory=DetectorConfig.cpu)
    num_train_images: int = 400  #: training images (those with cached proposals)
    batch_size: int = 4  #: images per mini-batch (the paper's N = 2)
    max_iter: int = 1000  #: optimizer updates
    lr: float = 0.05
    warmup_steps: int = 50
    max_proposals: int = 2000  #: proposals per image, train and test (the paper's ~2000)
    flip: bool = True  #: random horizontal flips in training (as the paper)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def display(self) -> None:
        items = {k: v for k, v in self.to_dict().items() if k != "model"}
        width = max(len(k) for k in items)
        print(f"{type(self).__name__} (model preset {self.model.preset!r})")
        for key, value in items.items():
            print(f"  {key:<{width}}  {value!r}")


#: "ci": under a minute (the chapter's cell, the tests of the command); "cpu": about five
#: minutes of training on 2 cores (the results file and the evolution table's row).
#: RoIs per image: Fast R-CNN samples 64 per image, a quarter foreground at IoU >= 0.5,
#: background in [0.1, 0.5) (section 2.3).
PRESETS: dict[str, FastRCNNRun] = {
    "ci": FastRCNNRun(
        model=DetectorConfig.ci(
            feature_stage="c3",
            backbone_width=16,
            box_head_size=64,
            roi_bg_iou_low=0.1,
            roi_batch_size_per_image=64,
        ),
        num_train_images=100,
        batch_size=4,
        max_iter=500,
        lr=0.05,
        warmup_steps=20,
    ),
    "cpu": FastRCNNRun(model=DetectorConfig.cpu(roi_bg_iou_low=0.1), batch_size=8, max_iter=8000),
}


def train_fast_rcnn(
    dataset,
    proposals: Mapping[int, Tensor],
    run: FastRCNNRun,
    device: str = "auto",
    progress: bool = False,
    out_dir: str | None = None,
):
    """Train a :class:`FastRCNN` on the first ``run.num_train_images`` images of
    ``dataset`` that have ``proposals``, through :func:`rcnn_steps.engine.train`
    (seeded by ``run.seed``). Returns ``(model, TrainResult)``."""

    seed_everything(run.seed)
    ids = [int(i) for i in dataset.image_ids if int(i) in proposals][: run.num_train_images]
    data = ProposalDataset(dataset, proposals, ids, run.max_proposals, flip=run.flip)
    loader = torch.utils.data.DataLoader(
        data, batch_size=run.batch_size, shuffle=True, collate_fn=collate_proposals
    )
    model = FastRCNN(run.model)
    config = TrainConfig(
        max_iter=run.max_iter,
        lr=run.lr,
        warmup_steps=min(run.warmup_steps, run.max_iter // 2),
        schedule="cosine",
        log_every=max(1, run.max_iter // 10),
        seed=run.seed,
        device=device,
        progress=progress,
        out_dir=out_dir,
    )
    result = train(model, loader, config, loss_fn=proposal_detection_loss)
    return model, result


@torch.no_grad()
def evaluate_fast_rcnn(
    model: FastRCNN,
    dataset,
    proposals: Mapping[int, Tensor],
    image_ids: Sequence[int],
    max_proposals: int = 2000,
) -> dict[str, Any]:
    """COCO box AP of ``model`` on ``image_ids`` (one image at a time, as at test time)
    and the network's seconds per image: backbone once, RoIPool of every proposal, the
    head, box decoding and NMS (:func:`rcnn_steps.evaluation.coco_evaluate`).

    Returns ``{"metrics": {...}, "network_seconds_per_image": s, "num_proposals": mean}``.
    """

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results, seconds, counts = [], [], []
    for image_id in image_ids:
        image = dataset.load_image(image_id).to(device)
        props = proposals[int(image_id)][:max_proposals].to(device)
        t0 = time.perf_counter()
        det = model([image], [props])[0]
        seconds.append(time.perf_counter() - t0)
        counts.append(len(props))
        results += detections_to_coco(
            image_id, det["boxes"], det["scores"], det["labels"], dataset.label_to_category_id
        )
    model.train(was_training)
    gt = subset_ground_truth(dataset.coco, image_ids)
    metrics = coco_evaluate(gt, results)
    return {
        "metrics": metrics,
        "network_seconds_per_image": float(np.mean(seconds)),
        "num_proposals": float(np.mean(counts)),
    }


def _evaluate_command(args) -> int:
    # read from their modules at call time (tests substitute a tiny set and its proposals)
    from rcnn_steps.data import synth_datasets
    from rcnn_steps.data.proposals import load_proposals, proposals_path

    started = time.time()
    set_threads(args.threads)
    run = PRESETS[args.preset]
    train_set, val_set = synth_datasets()
    # the proposals chapter 02 cached (python -m rcnn_steps.rcnn proposals)
    train_props = load_proposals(proposals_path("train"), train_set)
    val_props = load_proposals(proposals_path("val"), val_set)
    eval_ids = evaluation_image_ids(val_set)
    missing = [i for i in eval_ids if int(i) not in val_props]
    if missing:
        raise ValueError(f"no cached proposals for val images {missing[:5]}...")

    t0 = time.time()
    model, result = train_fast_rcnn(train_set, train_props, run, progress=args.progress)
    train_seconds = time.time() - t0

    # test time, on the timing thread count (the same as chapter 02's for a fair ratio)
    timing_threads = args.timing_threads or args.threads
    set_threads(timing_threads)
    proposal_seconds = []
    for image_id in eval_ids:  # selective search is timed again, in this run
        image = val_set.load_image(image_id)
        t1 = time.perf_counter()
        selective_search(image, "fast", seed=0, max_proposals=run.max_proposals)
        proposal_seconds.append(time.perf_counter() - t1)
    ev = evaluate_fast_rcnn(model, val_set, val_props, eval_ids, run.max_proposals)
    set_threads(args.threads)
    metrics = ev["metrics"]
    prop_s = float(np.mean(proposal_seconds))
    net_s = ev["network_seconds_per_image"]
    results = {
        "preset": args.preset,
        "config": run.to_dict(),
        "num_train_images": len(
            [i for i in train_set.image_ids if int(i) in train_props][: run.num_train_images]
        ),
        "num_eval_images": len(eval_ids),
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        "proposal_seconds_per_image": round(prop_s, 4),
        "network_seconds_per_image": round(net_s, 4),
        "seconds_per_image": round(prop_s + net_s, 4),
        "timing_threads": timing_threads,
        "mean_proposals_per_image": round(ev["num_proposals"], 1),
        "train_seconds": round(train_seconds, 1),
        **result.summary(),
    }
    write_results(args.out, results, preset=args.preset, seeds=[run.seed], started=started)
    if not args.no_evolution:
        add_row(
            "03",
            "Fast R-CNN",
            {"AP": metrics["AP"], "AP50": metrics["AP50"]},
            prop_s + net_s,
            notes=(
                f"selective search (fast) + one backbone pass, RoIPool "
                f"{run.model.pooled_size}x{run.model.pooled_size} on stride-8 features, "
                f"preset {args.preset}"
            ),
            extra={
                "proposal_seconds_per_image": round(prop_s, 4),
                "network_seconds_per_image": round(net_s, 4),
            },
        )
    print(
        f"AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f}; s/image: proposals {prop_s:.3f} + "
        f"network {net_s:.3f}; trained {train_seconds:.0f} s; wrote {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """``python -m rcnn_steps.fast_rcnn evaluate ...`` (``prog``: the name its help and
    errors show; ``python -m rcnn_steps fast-rcnn`` passes its own)."""
    parser = argparse.ArgumentParser(prog=prog or "python -m rcnn_steps.fast_rcnn")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="train, evaluate, write results and the table row")
    ev.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ev.add_argument("--out", type=Path, default=results_dir() / "fast_rcnn.json")
    add_evaluate_arguments(ev)
    add_debug_argument(parser, ev)
    args = parser.parse_args(argv)
    return run_command(_evaluate_command, args)


if __name__ == "__main__":
    sys.exit(main())
