"""Chapter 01's experiment: the sliding-window detector trained, evaluated and recorded.

The detector (crops, the crop classifier, windows, the fully convolutional trick,
detection, its cost and speed) is :mod:`rcnn_steps.detectors.sliding_window`; this module
is how the chapter runs it:

- :data:`PRESETS` (:class:`Preset`): the scale of a run, ``ci`` for the notebook and tests
  (about half a minute of training), ``cpu`` for the library command (about a minute);
- :func:`train_classifier`, :func:`train_box_regressor` and :func:`train_sliding_window`:
  the classifier, then R-CNN's class-specific box regressor on its frozen features, both
  through :func:`rcnn_steps.engine.train`;
- :func:`evaluate_detector`: COCO box AP of the dense detector, with and without box
  regression;
- ``python -m rcnn_steps.sliding_window evaluate --preset cpu`` (:func:`main`,
  :func:`run_evaluation`): trains, measures and writes ``results/sliding_window.json`` and
  the chapter's row of the evolution table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn_steps.data import synth_datasets
from rcnn_steps.detectors.sliding_window import (
    CropClassifier,
    CropSet,
    WindowConfig,
    classify_windows_dense,
    count_windows,
    make_crops,
    postprocess,
    time_detectors,
    to_fully_convolutional,
)
from rcnn_steps.engine import TrainConfig, TrainResult, classification_loss, train
from rcnn_steps.evaluation import coco_evaluate, detections_to_coco
from rcnn_steps.experiments import evolution
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
    "Preset",
    "SlidingWindowRun",
    "box_regression_loss",
    "coco_subset",
    "evaluate_detector",
    "main",
    "run_evaluation",
    "train_box_regressor",
    "train_classifier",
    "train_sliding_window",
]


@dataclass
class Preset:
    """The scale of a run (GUIDE section 7): ``ci`` for the notebook and tests (about half
    a minute of training), ``cpu`` for the library command (about a minute)."""

    name: str
    num_train_images: int  #: train images the crops are cut from
    per_class: int | None  #: crops per object class (None: all of the rarest class)
    background_ratio: float  #: background crops per object-class crop
    max_iter: int  #: classifier updates
    batch_size: int
    lr: float
    regressor_iter: int  #: box-regressor updates
    num_eval_images: int  #: val images for AP (the evolution table uses 50)
    num_timing_images: int  #: val images timed on the naive path


PRESETS = {
    "ci": Preset("ci", 400, 300, 6.0, 400, 64, 0.05, 300, 20, 2),
    "cpu": Preset("cpu", 1000, None, 6.0, 1000, 64, 0.05, 500, 50, 5),
}


def train_classifier(
    model: CropClassifier,
    crops: CropSet,
    preset: Preset,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train the classifier on the crops with :func:`rcnn_steps.engine.train` and
    :func:`rcnn_steps.engine.classification_loss` (SGD, warm-up, cosine decay).

    Writes ``out_dir/metrics.jsonl`` (the training curve) when ``out_dir`` is given.
    """
    loader = torch.utils.data.DataLoader(
        crops.classification_dataset(),
        batch_size=preset.batch_size,
        shuffle=True,
        drop_last=True,
    )
    config = TrainConfig(
        max_iter=preset.max_iter,
        lr=preset.lr,
        warmup_steps=min(100, preset.max_iter // 10),
        schedule="cosine",
        log_every=max(1, preset.max_iter // 30),
        seed=seed,
        out_dir=None if out_dir is None else str(out_dir),
        progress=progress,
    )
    return train(model, loader, config, loss_fn=classification_loss)


def box_regression_loss(head: nn.Module, batch: Any) -> dict[str, Tensor]:
    """A ``loss_fn`` for :func:`rcnn_steps.engine.train`: ``batch = (features (B, 128),
    labels (B,), targets (B, 4))``; ``head`` maps features to ``(B, 4 * C)`` deltas and
    only the four of each crop's own class are trained (smooth L1, Fast R-CNN eq. 3)."""
    features, labels, targets = batch
    deltas = head(features).reshape(len(features), -1, 4)
    picked = deltas[torch.arange(len(features), device=labels.device), labels - 1]
    return {"loss_box_reg": F.smooth_l1_loss(picked, targets, beta=1.0)}


def train_box_regressor(
    model: CropClassifier,
    crops: CropSet,
    preset: Preset,
    seed: int = 0,
    progress: bool = False,
) -> TrainResult:
    """Train ``model.bbox_pred`` on the positive crops, with the rest of the network
    frozen, as R-CNN does (its regressors are fitted on cached pool5 features after the
    CNN is trained): the ``(N, 128)`` fc features are computed once, then the linear head
    is trained through :func:`rcnn_steps.engine.train` with :func:`box_regression_loss`.
    """
    pos = crops.labels > 0
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model.embed(x.to(device)).cpu() for x in crops.images[pos].split(1024)])
    dataset = torch.utils.data.TensorDataset(feats, crops.labels[pos], crops.deltas[pos])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=preset.batch_size, shuffle=True, drop_last=True
    )
    config = TrainConfig(
        max_iter=preset.regressor_iter,
        lr=preset.lr,
        warmup_steps=0,
        schedule="cosine",
        log_every=max(1, preset.regressor_iter // 10),
        seed=seed,
        progress=progress,
    )
    return train(model.bbox_pred, loader, config, loss_fn=box_regression_loss)


@dataclass
class SlidingWindowRun:
    """What :func:`train_sliding_window` hands back."""

    model: CropClassifier
    crops: CropSet
    classifier: TrainResult
    regressor: TrainResult
    crop_seconds: float


def train_sliding_window(
    train_dataset,
    preset: str | Preset = "ci",
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> SlidingWindowRun:
    """Cut the crops, train the classifier, then the box regressor, all seeded by ``seed``."""
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    crops = make_crops(
        train_dataset,
        num_images=preset.num_train_images,
        per_class=preset.per_class,
        background_ratio=preset.background_ratio,
        seed=seed,
    )
    crop_seconds = time.perf_counter() - t0
    torch.manual_seed(seed)
    model = CropClassifier(len(train_dataset.class_names) - 1)
    cls = train_classifier(model, crops, preset, seed=seed, out_dir=out_dir, progress=progress)
    reg = train_box_regressor(model, crops, preset, seed=seed, progress=progress)
    model.eval()
    return SlidingWindowRun(model, crops, cls, reg, crop_seconds)


def coco_subset(dataset, image_ids: Sequence[int]) -> dict[str, Any]:
    """The dataset's COCO ground truth restricted to ``image_ids`` (a dict for
    :func:`rcnn_steps.evaluation.coco_evaluate`)."""
    ids = set(int(i) for i in image_ids)
    data = dataset.coco.dataset
    return {
        "images": [im for im in data["images"] if im["id"] in ids],
        "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
        "categories": data["categories"],
    }


def evaluate_detector(
    model: CropClassifier,
    dataset,
    image_ids: Sequence[int],
    config: WindowConfig | None = None,
) -> dict[str, Any]:
    """COCO box AP of the dense sliding-window detector on ``image_ids``, with and without
    box regression (the windows are scored once; only the post-processing differs).

    Returns ``{"with_regression": metrics, "without_regression": metrics,
    "seconds_per_image": s, "detections": {"with_regression": [...], ...}}`` where
    ``seconds_per_image`` times the regressing detector from image to detections.
    """
    config = config or WindowConfig()
    model.eval()
    dense = to_fully_convolutional(model)
    index = {int(i): k for k, i in enumerate(dataset.image_ids)}
    results: dict[str, list] = {"with_regression": [], "without_regression": []}
    seconds = 0.0
    for image_id in image_ids:
        image, _ = dataset[index[int(image_id)]]
        t0 = time.perf_counter()
        boxes, logits, deltas = classify_windows_dense(dense, image, config)
        with_reg = postprocess(boxes, logits, deltas, image.shape[1:], config)
        seconds += time.perf_counter() - t0
        without = postprocess(boxes, logits, None, image.shape[1:], config)
        for key, det in (("with_regression", with_reg), ("without_regression", without)):
            results[key].extend(
                detections_to_coco(
                    image_id,
                    det["boxes"],
                    det["scores"],
                    det["labels"],
                    dataset.label_to_category_id,
                )
            )
    gt = coco_subset(dataset, image_ids)
    metrics = {key: coco_evaluate(gt, dets) for key, dets in results.items()}
    return {**metrics, "seconds_per_image": seconds / max(len(image_ids), 1), "detections": results}


def run_evaluation(
    preset: str = "cpu",
    seed: int = 0,
    out: str | Path | None = None,
    evolution_path: str | Path | None = None,
    metrics_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (seeded), evaluate and time the sliding-window detector; write the results
    file and the evolution table's "sliding window" row. Returns the results payload."""

    started = time.time()
    seed_everything(seed)
    p = PRESETS[preset]
    train_set, val_set = synth_datasets()
    run = train_sliding_window(train_set, p, seed=seed, out_dir=metrics_dir, progress=progress)
    config = WindowConfig()
    size = tuple(val_set[0][0].shape[1:])
    windows = count_windows(size, config)

    table_ids = evolution.evaluation_image_ids(val_set)
    eval_ids = evolution.evaluation_image_ids(val_set, p.num_eval_images)
    ev = evaluate_detector(run.model, val_set, eval_ids, config)
    timing_images = [val_set[k][0] for k in range(p.num_timing_images)]
    timing = time_detectors(run.model, timing_images, config)

    def rounded(m: dict[str, float]) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in m.items()}

    last = run.classifier.history[-1]
    results = {
        "preset": asdict(p),
        "window_config": asdict(config),
        "image_size": list(size),
        "windows_per_image": windows["total"],
        "windows_per_size": {str(k): v for k, v in windows["per_size"].items()},
        "windows_per_ratio": {f"{k:.3f}": v for k, v in windows["per_ratio"].items()},
        "exhaustive_windows_per_image": size[0] * size[1] * len(config.sizes) * len(config.ratios),
        "num_crops": len(run.crops),
        "crop_counts": run.crops.counts(),
        "classifier_final_loss": round(last["total_loss"], 4),
        "classifier_train_seconds": round(run.classifier.wall_time_s, 2),
        "regressor_final_loss": round(run.regressor.losses["total_loss"], 4),
        "eval_image_ids": [int(i) for i in eval_ids],
        "num_eval_images": len(eval_ids),
        "box_ap_without_regression": rounded(ev["without_regression"]),
        "box_ap_with_regression": rounded(ev["with_regression"]),
        "seconds_per_image_dense_eval": round(ev["seconds_per_image"], 4),
        "timing": {k: round(v, 4) if isinstance(v, float) else v for k, v in timing.items()},
    }
    out = Path(out) if out is not None else results_dir() / "sliding_window.json"
    payload = write_results(out, results, preset=preset, seeds=[seed], started=started)
    if list(eval_ids) == list(table_ids):
        evolution.add_row(
            "01",
            "sliding window",
            ev["with_regression"],
            timing["dense_seconds_per_image"],
            path=evolution_path,
            notes=(
                f"fully convolutional sliding window, {windows['total']} windows/image, "
                f"box regression; preset {preset}"
            ),
            extra={
                "naive_seconds_per_image": round(timing["naive_seconds_per_image"], 4),
                "AP_without_regression": round(ev["without_regression"]["AP"], 4),
            },
        )
    return payload


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """``python -m rcnn_steps.sliding_window evaluate ...`` (``prog``: the name its help and
    errors show; ``python -m rcnn_steps sliding-window`` passes its own)."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m rcnn_steps.sliding_window",
        description="Chapter 01: train, evaluate and time the sliding-window detector.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="train (seeded), evaluate COCO box AP, time it")
    ev.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--out", type=Path, default=None, help="results file (default results/sliding_window.json)"
    )
    ev.add_argument(
        "--evolution",
        type=Path,
        default=None,
        help="evolution table (default results/evolution.json)",
    )
    ev.add_argument(
        "--metrics-dir", type=Path, default=None, help="keep the classifier's metrics.jsonl here"
    )
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    add_debug_argument(parser, ev)
    args = parser.parse_args(argv)
    return run_command(_evaluate_command, args)


def _evaluate_command(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    payload = run_evaluation(
        args.preset,
        args.seed,
        args.out,
        args.evolution,
        args.metrics_dir,
        progress=not args.quiet,
    )
    r = payload["results"]
    print(
        f"windows/image {r['windows_per_image']}; box AP {r['box_ap_without_regression']['AP']:.3f}"
        f" -> {r['box_ap_with_regression']['AP']:.3f} with regression; "
        f"naive {r['timing']['naive_seconds_per_image']:.3f} s/image, fully convolutional "
        f"{r['timing']['dense_seconds_per_image']:.3f} s/image "
        f"({r['timing']['speedup']:.1f}x); wall {payload['provenance']['wall_time_s']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
