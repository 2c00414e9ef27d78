"""The command line of the library: ``python -m rcnn_steps <command>``.

- ``evaluate``: train a chapter's detector (by preset) on the book's synthetic set,
  evaluate it on the evolution table's val images, write its results file and its row of
  the evolution table (chapters 04, 05 and 07);

The chapters' other commands live beside their modules (``python -m
rcnn_steps.sliding_window``, ``rcnn``, ``selective_search``, ``fast_rcnn``,
``ablations``). This module sits at the top with :mod:`rcnn_steps.runner`; nothing
imports it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["evaluate_results_path", "main"]

#: The presets ``evaluate`` knows, with the chapter, the evolution table's detector name
#: and the results file of each.
EVALUATE_PRESETS: dict[str, tuple[str, str, str]] = {
    "ci": ("04", "Faster R-CNN", "faster_rcnn.json"),
    "cpu": ("04", "Faster R-CNN", "faster_rcnn.json"),
    "cpu_fpn": ("05", "Faster R-CNN + FPN", "faster_rcnn_fpn.json"),
    "ci_mask": ("07", "Mask R-CNN", "mask_rcnn.json"),
    "cpu_mask": ("07", "Mask R-CNN", "mask_rcnn.json"),
}


def evaluate_results_path(preset: str) -> Path:
    """Where ``evaluate --preset P`` writes by default: ``results/faster_rcnn.json`` (cpu),
    ``results/faster_rcnn_fpn.json`` (cpu_fpn) or ``results/mask_rcnn.json`` (cpu_mask)."""
    from rcnn_steps.utils import results_dir

    return results_dir() / EVALUATE_PRESETS[preset][2]


def torchvision_baseline(config):
    """torchvision's model for ``config`` (:func:`rcnn_steps.mask_rcnn.torchvision_mask_rcnn`)
    around our backbone built exactly as ours is (same seed, so the same weights), with
    torchvision's own heads and their own initialisation: the baseline of
    ``evaluate --baseline-torchvision``."""
    from rcnn_steps.faster_rcnn import FasterRCNN
    from rcnn_steps.mask_rcnn import torchvision_mask_rcnn

    ours = FasterRCNN(config)  # draws the same random numbers as our model's construction
    return torchvision_mask_rcnn(config, copy.deepcopy(ours.backbone))


def _evaluate_command(args: argparse.Namespace) -> int:
    from rcnn_steps.evolution import add_row
    from rcnn_steps.runner import detector_config, run_setting
    from rcnn_steps.utils import set_threads, write_results

    started = time.time()
    overrides = _parse_overrides(args.set)
    if overrides and args.out is None:
        raise SystemExit(
            "evaluate: with --set, name the results file with --out (the preset's default "
            f"file, {evaluate_results_path(args.preset)}, is for the preset as it is)"
        )
    set_threads(args.threads)
    common: dict[str, Any] = dict(
        method="rpn",
        root=args.root,
        num_eval_images=args.num_eval_images,
        progress=args.progress,
        timing_threads=args.timing_threads,
    )
    run = run_setting("ours", overrides, args.seed, args.preset, args.max_iter, **common)
    config = detector_config(args.preset, overrides)
    results: dict[str, Any] = {**run, "config": config.to_dict()}
    if args.baseline_torchvision:
        results["torchvision"] = run_setting(
            "torchvision",
            overrides,
            args.seed,
            args.preset,
            args.max_iter,
            model_builder=torchvision_baseline,
            **common,
        )
    out = args.out or evaluate_results_path(args.preset)
    write_results(out, results, preset=args.preset, seeds=[args.seed], started=started)
    metrics, seconds = run["metrics"], run["seconds_per_image"]
    chapter, detector, _ = EVALUATE_PRESETS[args.preset]
    if overrides:
        print("(a preset with --set overrides is not a row of the evolution table)")
    elif not args.no_evolution:
        if config.fpn:
            features = "FPN levels P2-P6"
        else:
            stride = 2 ** int(config.feature_stage[1])
            features = f"shared {config.feature_stage} features (stride {stride})"
        branches = " + ".join(
            b for b, on in (("masks", config.masks), ("keypoints", config.keypoints)) if on
        )
        extra: dict[str, Any] = {
            "network_seconds_per_image": seconds,
            "proposal_seconds_per_image": 0.0,
        }
        if "segm_metrics" in run:
            extra["mask_AP"] = run["segm_metrics"]["AP"]
        if "keypoint_metrics" in run:
            extra["keypoint_AP"] = run["keypoint_metrics"]["AP"]
        add_row(
            chapter,
            detector,
            {"AP": metrics["AP"], "AP50": metrics["AP50"]},
            seconds,
            notes=(
                f"RPN ({config.rpn_post_nms_top_n_test} proposals) + {config.roi_op} "
                f"{config.pooled_size}x{config.pooled_size} on {features}, trained jointly"
                + (f", with {branches}" if branches else "")
                + f", preset {args.preset}"
            ),
            extra=extra,
        )
    line = f"box AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f}"
    if "segm_metrics" in run:
        line += f"; mask AP {run['segm_metrics']['AP']:.3f}"
    if "keypoint_metrics" in run:
        line += f"; keypoint AP {run['keypoint_metrics']['AP']:.3f}"
    if "torchvision" in results:
        tv = results["torchvision"]
        line += f" (torchvision's: box AP {tv['metrics']['AP']:.3f}"
        if "segm_metrics" in tv:
            line += f", mask AP {tv['segm_metrics']['AP']:.3f}"
        line += ")"
    print(
        f"{line}; {seconds:.4f} s/image ({run['timing_threads']} thread(s)); "
        f"trained {run['train_seconds']:.0f} s; wrote {out}"
    )
    return 0


def _parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["mask_aligned=True", "roi_op=roipool"]`` -> ``{"mask_aligned": True, "roi_op":
    "roipool"}``: values are Python literals where they parse as one, else strings."""
    import ast
    import dataclasses

    from rcnn_steps.faster_rcnn import DetectorConfig

    fields = {f.name for f in dataclasses.fields(DetectorConfig)}
    overrides: dict[str, Any] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(
                f"evaluate: --set takes FIELD=VALUE with a DetectorConfig field, got {item!r}"
                + ("" if not sep else f"; {name!r} is not a field")
            )
        try:
            overrides[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[name] = text
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rcnn_steps evaluate --preset P``: train the preset's detector on the
    synthetic train set, measure box (and mask, keypoint) AP and seconds per image on the
    evolution table's val images, write the results file and the table's row."""
    from rcnn_steps.evolution import add_evaluate_arguments

    parser = argparse.ArgumentParser(prog="python -m rcnn_steps")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser(
        "evaluate",
        help="train a chapter's detector, evaluate it, write its results file and table row",
    )
    ev.add_argument("--preset", choices=sorted(EVALUATE_PRESETS), default="cpu")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--max-iter", type=int, default=None, help="default: the preset's")
    ev.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default results/faster_rcnn.json, faster_rcnn_fpn.json or mask_rcnn.json",
    )
    ev.add_argument(
        "--root", type=Path, default=None, help="a synthetic/COCO-format set (default: the book's)"
    )
    ev.add_argument(
        "--num-eval-images", type=int, default=None, help="default: the evolution table's"
    )
    ev.add_argument(
        "--baseline-torchvision",
        action="store_true",
        help="also train torchvision's model at the same config, schedule and seed",
    )
    ev.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a DetectorConfig field of the preset (repeatable; needs --out)",
    )
    add_evaluate_arguments(ev)
    args = parser.parse_args(argv)
    return _evaluate_command(args)


if __name__ == "__main__":
    sys.exit(main())
