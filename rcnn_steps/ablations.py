"""The ablation grids of chapter 04: the Faster R-CNN paper's tables, at small scale.

Each grid is a list of named settings (overrides of
:class:`~rcnn_steps.faster_rcnn.DetectorConfig`), each with the paper's number beside it
(:func:`faster_rcnn_grid`). :func:`run_grid` trains and evaluates every (setting, seed)
pair with :func:`run_setting` and keeps the results file up to date after each run, so
an interrupted grid resumes where it stopped; at the end it summarises each setting over
the seeds (mean, min, max, std), because at this scale an effect is real only where it is
larger than the spread between seeds (GUIDE section 3).

Reproduced tables (Ren et al. 2015, "Faster R-CNN", VGG-16, PASCAL VOC 2007 test mAP at
IoU 0.5, in %; we report COCO box AP and AP50 on the synthetic set, whose AP50 is the
closer analogue of VOC mAP):

- ``table8``, Table 8 (anchor settings): 1 scale 1 ratio 65.8 (128^2) / 66.7 (256^2),
  1 scale 3 ratios 68.8 (128^2) / 67.9 (256^2), 3 scales 1 ratio 69.8, 3 scales 3 ratios
  69.9.
- ``table9``, Table 9 (lambda of the RPN loss, eq. 1, with the paper's normalisation):
  lambda 0.1 67.2, 1 68.9, 10 69.9, 100 69.1.

Command (one results file per table)::

    python -m rcnn_steps.ablations faster-rcnn --table table8 --seeds 0 1 --preset cpu \\
        --out results/ablation_table8.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rcnn_steps.faster_rcnn import PRESET_TRAINING, DetectorConfig

__all__ = [
    "PAPER_METRIC",
    "TABLES",
    "faster_rcnn_grid",
    "load_datasets",
    "main",
    "run_grid",
    "run_key",
    "run_setting",
    "summarise",
]

#: What the papers' numbers beside each setting are.
PAPER_METRIC = "Faster R-CNN (VGG-16), PASCAL VOC 2007 test mAP at IoU 0.5, %"

#: The paper's anchor sizes (sqrt of the area, pixels on ~600 px images) and ours: the
#: paper's divided by 16 (see :func:`faster_rcnn_grid`).
PAPER_ANCHOR_SIZES = (128, 256, 512)
ANCHOR_SCALE = 1 / 16
OUR_ANCHOR_SIZES = tuple(int(s * ANCHOR_SCALE) for s in PAPER_ANCHOR_SIZES)  # (8, 16, 32)
_RATIOS_1 = (1.0,)
_RATIOS_3 = (0.5, 1.0, 2.0)

TABLES = ("table8", "table9")

#: Metrics copied from each run into the summary.
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def faster_rcnn_grid(table: str) -> dict[str, dict[str, Any]]:
    """The named settings of one Faster R-CNN paper table, in the paper's order:
    ``{name: {"overrides": {DetectorConfig field: value}, "paper": number, "label": str}}``.

    ``"table8"``, Table 8 of Ren et al. 2015 (anchors; VOC07 test mAP, VGG-16):

    ========================  =======================  ========  ==========================
    name                      paper anchors             paper     ours (sizes, ratios h/w)
    ========================  =======================  ========  ==========================
    ``1s1r_128``              128^2, 1:1               65.8      (8,), (1,)
    ``1s1r_256``              256^2, 1:1               66.7      (16,), (1,)
    ``1s3r_128``              128^2, {2:1, 1:1, 1:2}   68.8      (8,), (0.5, 1, 2)
    ``1s3r_256``              256^2, {2:1, 1:1, 1:2}   67.9      (16,), (0.5, 1, 2)
    ``3s1r``                  {128,256,512}^2, 1:1     69.8      (8, 16, 32), (1,)
    ``3s3r``                  {128,256,512}^2, 3 r.    69.9      (8, 16, 32), (0.5, 1, 2)
    ========================  =======================  ========  ==========================

    How the anchors are scaled: the paper's sizes are divided by 16, so 128/256/512 become
    8/16/32 pixels. Why not by the image ratio (600 -> 128 px, x0.21, giving 27/55/109):
    the synthetic set's objects are much smaller relative to the image than VOC's (sqrt
    area quartiles 9 / 17 / 33 px on 128 px images, 5th-95th percentile 5-52), so image
    scaling would put every anchor above three quarters of the objects and the largest at
    almost the whole image. What the table tests is how well the anchor set covers the
    objects' sizes and shapes; with /16 the three scales sit at the objects' quartiles
    (8, 16, 32), as the paper's three span VOC's objects, one scale covers only part of
    them as in the paper, and 8 px is one cell of the stride-8 feature map of the ``cpu``
    preset (``feature_stage="c3"``): the smallest anchor that still tiles the map
    without gaps. The scales stay an octave apart and the ratios are the paper's. The
    RPN loss is left at the preset's (lambda 1, torchvision normalisation); the paper ran
    Table 8 with lambda 10 and its normalisation, which ``table9`` covers.

    ``"table9"``, Table 9 (lambda of eq. 1, with ``rpn_normalization="paper"``: the
    classification term averaged over the sampled anchors, the box term over the anchor
    locations, lambda 10 balancing the two; VOC07 test mAP, VGG-16): ``lambda_0.1`` 67.2,
    ``lambda_1`` 68.9, ``lambda_10`` 69.9, ``lambda_100`` 69.1. The anchors are the
    preset's.
    """
    if table == "table8":
        s128, s256 = OUR_ANCHOR_SIZES[:2]
        rows = [
            ("1s1r_128", (s128,), _RATIOS_1, 65.8, "1 scale (128^2), 1 ratio"),
            ("1s1r_256", (s256,), _RATIOS_1, 66.7, "1 scale (256^2), 1 ratio"),
            ("1s3r_128", (s128,), _RATIOS_3, 68.8, "1 scale (128^2), 3 ratios"),
            ("1s3r_256", (s256,), _RATIOS_3, 67.9, "1 scale (256^2), 3 ratios"),
            ("3s1r", OUR_ANCHOR_SIZES, _RATIOS_1, 69.8, "3 scales, 1 ratio"),
            ("3s3r", OUR_ANCHOR_SIZES, _RATIOS_3, 69.9, "3 scales, 3 ratios"),
        ]
        return {
            name: {
                "overrides": {"anchor_sizes": sizes, "anchor_aspect_ratios": ratios},
                "paper": paper,
                "label": label,
            }
            for name, sizes, ratios, paper, label in rows
        }
    if table == "table9":
        rows9 = [(0.1, 67.2), (1.0, 68.9), (10.0, 69.9), (100.0, 69.1)]
        return {
            f"lambda_{lam:g}": {
                "overrides": {"rpn_lambda": lam, "rpn_normalization": "paper"},
                "paper": paper,
                "label": f"lambda = {lam:g}",
            }
            for lam, paper in rows9
        }
    raise ValueError(f"faster_rcnn_grid: unknown table {table!r}; one of {list(TABLES)}.")


def detector_config(preset: str, overrides: dict[str, Any]) -> DetectorConfig:
    """The preset's :class:`DetectorConfig` (``ci`` or ``cpu``) with ``overrides``."""
    presets = {"ci": DetectorConfig.ci, "cpu": DetectorConfig.cpu}
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; one of {sorted(presets)}.")
    return presets[preset](**overrides)


def schedule(preset: str, max_iter: int | None = None) -> dict[str, Any]:
    """The preset's training schedule (:data:`~rcnn_steps.faster_rcnn.PRESET_TRAINING`),
    shortened to ``max_iter`` when given: the learning-rate milestones scale with it (the
    ``cpu`` preset's drop at 1200 of 1500 becomes 480 of 600) and the warm-up is capped at
    half the run, so a short run keeps the schedule's shape."""
    base = dict(PRESET_TRAINING[preset])
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


def load_datasets(root: str | Path | None = None):
    """The synthetic (train, val) sets, box-only (``load_masks=False``): ``root`` is a
    folder written by :func:`rcnn_steps.data.generate`, default the book's set (generated
    first if missing)."""
    from rcnn_steps.data import CocoDataset, ensure_synth

    root = Path(root) if root is not None else ensure_synth()
    return tuple(
        CocoDataset(
            root / split, root / "annotations" / f"instances_{split}.json", load_masks=False
        )
        for split in ("train", "val")
    )


@torch.no_grad()
def evaluate_detector(model, dataset, image_ids: Sequence[int]) -> dict[str, float]:
    """COCO box AP of ``model`` on ``image_ids`` of ``dataset`` (one image at a time)."""
    from rcnn_steps.evaluation import coco_evaluate, detections_to_coco, subset_ground_truth

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    for image_id in image_ids:
        det = model([dataset.load_image(image_id).to(device)])[0]
        results += detections_to_coco(
            image_id, det["boxes"], det["scores"], det["labels"], dataset.label_to_category_id
        )
    model.train(was_training)
    return coco_evaluate(subset_ground_truth(dataset.coco, image_ids), results)


def run_setting(
    name: str,
    overrides: dict[str, Any],
    seed: int,
    preset: str,
    max_iter: int | None = None,
    *,
    root: str | Path | None = None,
    batch_size: int = 8,
    num_eval_images: int | None = None,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Train one Faster R-CNN (``preset``'s config with ``overrides``, seeded by ``seed``)
    on the synthetic train set through :func:`rcnn_steps.engine.train`, and evaluate its
    COCO box AP on :func:`~rcnn_steps.evolution.evaluation_image_ids` of the val set.

    Returns a JSON-able dict: ``name, seed, preset, max_iter, overrides, metrics``
    (rounded to 4 digits), ``num_eval_images, wall_time_s`` (training and evaluation),
    ``train_seconds, eval_seconds`` and the :meth:`~rcnn_steps.engine.TrainResult.summary`
    fields.
    """
    from rcnn_steps.data import collate_fn
    from rcnn_steps.engine import TrainConfig, train
    from rcnn_steps.evolution import NUM_EVAL_IMAGES, evaluation_image_ids
    from rcnn_steps.faster_rcnn import FasterRCNN
    from rcnn_steps.utils import seed_everything

    t0 = time.perf_counter()
    config = detector_config(preset, overrides)
    train_set, val_set = load_datasets(root)
    seed_everything(seed)
    model = FasterRCNN(config)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch_size, shuffle=True, collate_fn=collate_fn
    )
    train_cfg = TrainConfig(
        **schedule(preset, max_iter), seed=seed, device=device, progress=progress
    )
    result = train(model, loader, train_cfg)
    t1 = time.perf_counter()
    eval_ids = evaluation_image_ids(val_set, num_eval_images or NUM_EVAL_IMAGES)
    metrics = evaluate_detector(model, val_set, eval_ids)
    t2 = time.perf_counter()
    return {
        "name": name,
        "seed": int(seed),
        "preset": preset,
        "max_iter": train_cfg.max_iter,
        "overrides": json.loads(json.dumps(overrides)),
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        "num_eval_images": len(eval_ids),
        "wall_time_s": round(t2 - t0, 2),
        "train_seconds": round(t1 - t0, 2),
        "eval_seconds": round(t2 - t1, 2),
        **result.summary(),
    }


def run_key(name: str, seed: int) -> str:
    """The key of one run in a results file: ``"<setting>/seed<seed>"``."""
    return f"{name}/seed{int(seed)}"


def _spread(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {
        "mean": round(mean, 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "std": round(std, 4),
    }


def summarise(
    grid: dict[str, dict[str, Any]], runs: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per setting of ``grid``, over the seeds run so far: ``{"paper", "label", "seeds",
    "n", metric: {"mean", "min", "max", "std"}}`` for :data:`SUMMARY_METRICS` and
    ``wall_time_s``. ``std`` is the sample standard deviation (0 for one seed)."""
    summary: dict[str, dict[str, Any]] = {}
    for name, setting in grid.items():
        done = sorted((r for r in runs.values() if r["name"] == name), key=lambda r: r["seed"])
        entry: dict[str, Any] = {
            "paper": setting["paper"],
            "label": setting["label"],
            "seeds": [r["seed"] for r in done],
            "n": len(done),
        }
        if done:
            for metric in SUMMARY_METRICS:
                values = [r["metrics"][metric] for r in done if metric in r["metrics"]]
                if values:
                    entry[metric] = _spread(values)
            entry["wall_time_s"] = _spread([r["wall_time_s"] for r in done])
        summary[name] = entry
    return summary


def run_grid(
    table: str,
    seeds: Sequence[int],
    preset: str,
    out: str | Path,
    max_iter: int | None = None,
    *,
    settings: Sequence[str] | None = None,
    root: str | Path | None = None,
    num_eval_images: int | None = None,
    device: str = "auto",
    progress: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run every (setting, seed) of ``table`` with :func:`run_setting`, writing the
    results file ``out`` after each run (atomically, with :func:`rcnn_steps.utils.
    write_results`'s provenance) and skipping the runs it already holds, so an interrupted
    grid resumes where it stopped. ``settings`` restricts the grid to some names.

    The file's ``results`` hold ``table, preset, max_iter, paper_metric, settings`` (the
    grid), ``runs`` (``{run_key(name, seed): run}``) and ``summary`` (:func:`summarise`).
    A file made with another table, preset or ``max_iter`` is refused rather than mixed.
    Returns the ``results`` dict.
    """
    from rcnn_steps.utils import read_results, write_results

    started = time.time()
    grid = faster_rcnn_grid(table)
    if settings is not None:
        unknown = sorted(set(settings) - set(grid))
        if unknown:
            raise ValueError(f"unknown settings {unknown} for {table}; one of {list(grid)}")
        grid = {k: v for k, v in grid.items() if k in set(settings)}
    iters = schedule(preset, max_iter)["max_iter"]
    out = Path(out)
    runs: dict[str, dict[str, Any]] = {}
    earlier_seeds: list[int] = []
    if out.exists():
        old = read_results(out)
        held = old["results"]
        for key, want in (("table", table), ("preset", preset), ("max_iter", iters)):
            if held.get(key) != want:
                raise ValueError(
                    f"{out} holds runs with {key}={held.get(key)!r}, not {want!r}: pass "
                    "another --out (or delete the file) rather than mix the two grids"
                )
        runs = dict(held.get("runs", {}))
        earlier_seeds = list(old["provenance"].get("seeds") or [])
    all_seeds = sorted({*earlier_seeds, *(int(s) for s in seeds)})
    full_grid = faster_rcnn_grid(table)

    def results() -> dict[str, Any]:
        return {
            "table": table,
            "preset": preset,
            "max_iter": iters,
            "paper_metric": PAPER_METRIC,
            "settings": json.loads(json.dumps(full_grid)),
            "runs": dict(sorted(runs.items())),
            "summary": summarise(full_grid, runs),
        }

    todo = [(name, int(seed)) for name in grid for seed in seeds]
    for i, (name, seed) in enumerate(todo, 1):
        key = run_key(name, seed)
        if key in runs:
            if verbose:
                print(f"[{i}/{len(todo)}] {key}: already in {out}, skipped")
            continue
        run = run_setting(
            name,
            grid[name]["overrides"],
            seed,
            preset,
            max_iter,
            root=root,
            num_eval_images=num_eval_images,
            device=device,
            progress=progress,
        )
        runs[key] = run
        write_results(out, results(), preset=preset, seeds=all_seeds, started=started)
        if verbose:
            m = run["metrics"]
            print(
                f"[{i}/{len(todo)}] {key}: AP {m['AP']:.3f} AP50 {m['AP50']:.3f} "
                f"in {run['wall_time_s']:.0f} s (paper {grid[name]['paper']})"
            )
    final = results()
    write_results(out, final, preset=preset, seeds=all_seeds, started=started)
    return final


def _print_summary(results: dict[str, Any]) -> None:
    print(f"{results['table']} ({results['preset']}, {results['max_iter']} iterations)")
    print(f"  {'setting':<12} {'paper':>6}  {'AP mean [min, max] std':<30} AP50 mean  n")
    for name, s in results["summary"].items():
        if not s["n"]:
            print(f"  {name:<12} {s['paper']:>6}  (not run)")
            continue
        ap, ap50 = s["AP"], s["AP50"]
        spread = f"{ap['mean']:.3f} [{ap['min']:.3f}, {ap['max']:.3f}] {ap['std']:.3f}"
        print(f"  {name:<12} {s['paper']:>6}  {spread:<30} {ap50['mean']:.3f}     {s['n']}")


def _faster_rcnn_command(args) -> int:
    from rcnn_steps.utils import set_threads

    set_threads(args.threads)
    results = run_grid(
        args.table,
        args.seeds,
        args.preset,
        args.out,
        args.max_iter,
        settings=args.settings,
        num_eval_images=args.num_eval_images,
        progress=args.progress,
    )
    _print_summary(results)
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rcnn_steps.ablations")
    sub = parser.add_subparsers(dest="command", required=True)
    fr = sub.add_parser(
        "faster-rcnn", help="Faster R-CNN Table 8 (anchors) or Table 9 (lambda) grid"
    )
    fr.add_argument("--table", choices=TABLES, required=True)
    fr.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    fr.add_argument("--preset", choices=("ci", "cpu"), default="cpu")
    fr.add_argument("--max-iter", type=int, default=None, help="default: the preset's")
    fr.add_argument(
        "--settings", nargs="+", default=None, help="run only these settings of the table"
    )
    fr.add_argument(
        "--num-eval-images", type=int, default=None, help="default: the evolution table's 50"
    )
    fr.add_argument("--out", type=Path, default=None, help="default results/ablation_<table>.json")
    fr.add_argument("--threads", type=int, default=2)
    fr.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.out is None:
        from rcnn_steps.utils import results_dir

        args.out = results_dir() / f"ablation_{args.table}.json"
    return _faster_rcnn_command(args)


if __name__ == "__main__":
    sys.exit(main())
