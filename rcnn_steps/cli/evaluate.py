"""``python -m rcnn_steps evaluate``: train a chapter's detector (by preset) on the book's
synthetic set, evaluate it on the evolution table's val images, write its results file and
its row of the evolution table (chapters 04, 05 and 07). Every argument is checked before
training starts (:func:`_check_evaluate_arguments`): training takes minutes, and a mistake
found after it would lose them."""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rcnn_steps.cli.checks import check_at_least, check_out_file, parse_overrides, path_argument
from rcnn_steps.experiments import evaluated_presets
from rcnn_steps.experiments import preset as preset_record
from rcnn_steps.experiments.evolution import add_evaluate_arguments, add_row
from rcnn_steps.utils import CommandError, results_dir, set_threads, write_results


def add_parser(sub) -> argparse.ArgumentParser:
    """``evaluate``'s arguments, as a subcommand of ``sub`` (the top parser's subparsers)."""
    ev = sub.add_parser(
        "evaluate",
        help="train a chapter's detector, evaluate it, write its results file and table row",
    )
    ev.add_argument("--preset", choices=evaluated_presets(), default="cpu")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--max-iter", type=int, default=None, help="default: the preset's")
    ev.add_argument(
        "--out",
        type=path_argument,
        default=None,
        help="default results/faster_rcnn.json, faster_rcnn_fpn.json or mask_rcnn.json",
    )
    ev.add_argument(
        "--root",
        type=path_argument,
        default=None,
        help="a synthetic/COCO-format set (default: the book's)",
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
        help="override a DetectorConfig field of the preset, flat or by section (mask_loss "
        "or mask.loss; repeatable; needs --out)",
    )
    add_evaluate_arguments(ev)
    return ev


def evaluate_results_path(preset: str) -> Path:
    """Where ``evaluate --preset P`` writes by default: the results file of the preset's
    record (:mod:`rcnn_steps.experiments`) in ``results/``: ``faster_rcnn.json`` (cpu),
    ``faster_rcnn_fpn.json`` (cpu_fpn) or ``mask_rcnn.json`` (cpu_mask)."""
    record = preset_record(preset)
    if record.results_file is None:
        raise ValueError(
            f"preset {preset!r} has no results file (evaluate writes one for "
            f"{evaluated_presets()}); train it with `python -m rcnn_steps train`"
        )
    return results_dir() / record.results_file


def torchvision_baseline(config):
    """torchvision's model for ``config``
    (:func:`rcnn_steps.detectors.mask_rcnn.torchvision_mask_rcnn`) around our backbone
    built exactly as ours is (same seed, so the same weights), with torchvision's own
    heads and their own initialisation: the baseline of ``evaluate
    --baseline-torchvision``."""
    # local: the command line's start-up
    from rcnn_steps.detectors.faster_rcnn import FasterRCNN
    from rcnn_steps.detectors.mask_rcnn import torchvision_mask_rcnn

    ours = FasterRCNN(config)  # draws the same random numbers as our model's construction
    return torchvision_mask_rcnn(config, copy.deepcopy(ours.backbone))


def command(args: argparse.Namespace) -> int:
    """``evaluate``: one run of the preset (and, with ``--baseline-torchvision``,
    torchvision's model beside it), its results file, and its row of the evolution table
    unless ``--set`` changed the preset or ``--no-evolution`` is given."""
    # local: the command line's start-up (and tests replace runner.run_setting)
    from rcnn_steps.experiments.runner import run_setting

    started = time.time()
    overrides, config, out = _check_evaluate_arguments(args)
    set_threads(args.threads)
    common: dict[str, Any] = dict(
        method="rpn",
        root=args.root,
        num_eval_images=args.num_eval_images,
        progress=args.progress,
        timing_threads=args.timing_threads,
    )
    run = run_setting("ours", overrides, args.seed, args.preset, args.max_iter, **common)
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
    write_results(out, results, preset=args.preset, seeds=[args.seed], started=started)
    metrics, seconds = run["metrics"], run["seconds_per_image"]
    record = preset_record(args.preset)
    chapter, detector = record.chapter, record.detector
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


def _check_evaluate_arguments(args: argparse.Namespace):
    """Every argument of ``evaluate`` checked before the first step of work (training
    takes minutes, and a mistake found after it would lose them): ``(overrides, config,
    out)``, the parsed ``--set``, the preset's config with it, and the results file to
    write. Each mistake is a one-line :class:`CommandError` naming the argument."""
    # local: the command line's start-up
    from rcnn_steps.experiments.runner import detector_config, schedule

    check_at_least("evaluate", args, threads=1, timing_threads=1, num_eval_images=1, max_iter=1)
    if not 0 <= args.seed < 2**32:
        raise CommandError(f"evaluate: --seed must be in 0 .. 2**32 - 1, got {args.seed}")
    overrides = parse_overrides(args.set)
    if overrides and args.out is None:
        raise CommandError(
            "evaluate: with --set, name the results file with --out (the preset's default "
            f"file, {evaluate_results_path(args.preset)}, is for the preset as it is)"
        )
    try:
        config = detector_config(args.preset, overrides)
    except (ValueError, TypeError) as e:
        raise CommandError(f"evaluate: --set {' '.join(args.set)}: {e}") from None
    schedule(args.preset, args.max_iter)  # the schedule exists and fits --max-iter
    _check_book_classes(config, args.root)
    out = args.out or evaluate_results_path(args.preset)
    check_out_file("evaluate", out, "results", overwrite=True)
    return overrides, config, out


def _book_classes(categories: Sequence[dict]) -> list[tuple[str, int]]:
    """``(name, keypoint count)`` of each category, in the order of their ids (the order
    of the model's labels 1..C): what a set's classes are, to the detector."""
    ordered = sorted(categories, key=lambda c: c["id"])
    return [(c["name"], len(c.get("keypoints") or ())) for c in ordered]


def _check_book_classes(config, root: Path | None) -> None:
    """``evaluate`` reproduces the book's numbers: its model is the preset's, sized for
    the book's synthetic set (six classes, the person's eleven keypoints), and its
    results file and table row are that detector on that set. So the ``--root`` set must
    have the synthetic set's classes (a synthetic set of another size or seed does), and
    ``--set`` must leave the model sized for them. Custom classes go to ``train``, which
    sizes the model from the data; sizing it here would write a row of the book's table
    for another task, and without this check the run dies after training (``label 6 has
    no COCO category id``)."""
    import json

    # local: the command line's start-up
    from rcnn_steps.data import CATEGORIES

    book = _book_classes(CATEGORIES)
    if config.num_classes != len(book) or (
        config.keypoints and config.keypoint_counts != tuple(k for _, k in book)
    ):
        raise CommandError(
            f"evaluate: --set makes a model for {config.num_classes} classes (keypoint counts "
            f"{config.keypoint_counts}); evaluate trains on the book's {len(book)} classes "
            f"(keypoint counts {tuple(k for _, k in book)}); to train on other classes use "
            "`python -m rcnn_steps train`"
        )
    if root is None:
        return  # the book's own set (generated when missing), its classes by construction
    for split in ("train", "val"):
        annotations = Path(root) / "annotations" / f"instances_{split}.json"
        if not annotations.is_file():
            raise CommandError(
                f"evaluate: --root {root} has no annotations/instances_{split}.json; pass a "
                "folder laid out as the synthetic set (train/, val/, annotations/)"
            )
        try:
            found = _book_classes(json.loads(annotations.read_text())["categories"])
        except (ValueError, KeyError, TypeError) as e:
            raise CommandError(
                f"evaluate: --root {root}: {annotations.name} is not a COCO annotation file "
                f"with categories ({type(e).__name__}: {e})"
            ) from None
        if found != book:
            names = ", ".join(name for name, _ in found)
            raise CommandError(
                f"evaluate: --root {root} has {len(found)} classes ({names}) in {split}, not "
                f"the book's synthetic set's {len(book)} ({', '.join(n for n, _ in book)}): "
                "evaluate reproduces the book's numbers on its classes; for your own data "
                f"use `python -m rcnn_steps train --data {root}` (it sizes the model from "
                "the data and evaluates it)"
            )
