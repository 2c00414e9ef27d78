"""Chapter 02's proposal measurements: selective search beside OpenCV's, recorded.

The algorithm (segments, similarities, hierarchical grouping, the fast and quality modes,
recall and MABO of a set of proposals) is :mod:`rcnn_steps.detectors.selective_search`;
this module measures it on the synthetic sets:

- :func:`evaluate` (``python -m rcnn_steps.selective_search evaluate``, writes
  ``results/selective_search.json``): recall at IoU 0.5 and 0.7 against the number of
  proposals, and seconds per image, for each of :data:`METHODS`;
- :func:`quality` (``python -m rcnn_steps.selective_search quality``, writes
  ``results/selective_search_hard.json``): MABO and recall at IoU 0.5, the paper's Table 5
  measures, on the book's set and its ``hard`` twin, beside the paper's VOC 2007 figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcnn_steps.data import CocoDataset, ensure_synth, synth_datasets
from rcnn_steps.detectors.selective_search import (
    PAPER_VOC2007,
    opencv_selective_search,
    proposal_quality,
    proposal_recall,
    selective_search,
)
from rcnn_steps.utils import (
    add_debug_argument,
    results_dir,
    run_command,
    set_threads,
    write_results,
)

__all__ = ["METHODS", "evaluate", "main", "quality"]


#: What ``evaluate`` compares (see :func:`evaluate`).
METHODS = (
    "ours-fast",
    "ours-quality",
    "opencv-fast",
    "opencv-quality",
    "opencv-fast-k50",
    "opencv-quality-k50",
)


def evaluate(
    num_images: int = 30,
    num_proposals: Sequence[int] = (10, 30, 100, 300, 1000, 2000),
    seed: int = 0,
    methods: Sequence[str] = METHODS,
) -> dict:
    """Recall at IoU 0.5 and 0.7 vs number of proposals, and seconds per image, of our
    selective search and OpenCV's on the first ``num_images`` synthetic val images.

    ``methods``: ``ours-fast``, ``ours-quality``, ``opencv-fast``, ``opencv-quality``
    (OpenCV's default k = 150 + 150 i) and ``opencv-fast-k50``, ``opencv-quality-k50``
    (k = 50 + 50 i, the paper's fast thresholds)."""

    _, val = synth_datasets()
    images, gts = [], []
    for idx in range(min(num_images, len(val))):
        image, target = val[idx]
        images.append(image)
        gts.append(target["boxes"])
    out = {
        "num_images": len(images),
        "num_gt_boxes": int(sum(len(g) for g in gts)),
        "num_proposals": list(num_proposals),
        "iou_thresholds": [0.5, 0.7],
        "methods": {},
    }
    for method in methods:
        props, seconds = _run_method(method, images, seed)
        recall = proposal_recall(props, gts, num_proposals, (0.5, 0.7))
        out["methods"][method] = {
            "recall@0.5": [round(float(r), 4) for r in recall[0]],
            "recall@0.7": [round(float(r), 4) for r in recall[1]],
            "seconds_per_image": round(float(np.mean(seconds)), 4),
            "mean_proposals_per_image": round(float(np.mean([len(p) for p in props])), 1),
        }
        print(
            f"{method:<15} {np.mean(seconds):7.3f} s/image  "
            f"{np.mean([len(p) for p in props]):7.1f} proposals  "
            f"recall@0.5 {recall[0].round(3).tolist()}  recall@0.7 {recall[1].round(3).tolist()}",
            flush=True,
        )
    return out


def _run_method(
    method: str, images: Sequence[torch.Tensor], seed: int = 0
) -> tuple[list[torch.Tensor], list[float]]:
    """The proposals of one of :data:`METHODS` for each image, and its seconds per image."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    impl, mode, *k = method.split("-")
    base_k = 50 if k == ["k50"] else 150
    props, seconds = [], []
    for image in images:
        t0 = time.perf_counter()
        if impl == "ours":
            p = selective_search(image, mode, seed=seed)
        else:
            p = opencv_selective_search(image, mode, base_k=base_k, inc_k=base_k)
        seconds.append(time.perf_counter() - t0)
        props.append(p)
    return props, seconds


def quality(
    roots: Sequence[str | Path] | None = None,
    num_images: int = 100,
    methods: Sequence[str] = ("ours-fast", "opencv-fast"),
    max_proposals: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """MABO and recall at IoU > 0.5 (:func:`proposal_quality`) of ``methods`` on the first
    ``num_images`` val images of each synthetic set in ``roots``, beside the paper's VOC
    2007 figures (:data:`PAPER_VOC2007`).

    ``roots``: folders holding ``annotations/instances_val.json`` and ``val/``; default the
    book's set and its ``hard`` twin (:func:`~rcnn_steps.data.ensure_synth`, generated if
    missing)."""

    if roots is None:
        roots = [ensure_synth(), ensure_synth(scene_style="hard")]
    out: dict[str, Any] = {
        "num_images": num_images,
        "max_proposals": max_proposals,
        "paper_voc2007_test": PAPER_VOC2007,
        "sets": {},
    }
    for root in roots:
        root = Path(root)
        annotations = root / "annotations" / "instances_val.json"
        if not annotations.exists():
            raise FileNotFoundError(
                f"{annotations} does not exist: --root must be a synthetic set's folder "
                "(python -m rcnn_steps.data synth --out DIR writes one)"
            )
        val = CocoDataset(root / "val", annotations, load_masks=False)
        images, gts, labels = [], [], []
        for idx in range(min(num_images, len(val))):
            image, target = val[idx]
            images.append(image)
            gts.append(target["boxes"])
            labels.append(target["labels"])
        per_method = {}
        for method in methods:
            props, seconds = _run_method(method, images, seed)
            q = proposal_quality(props, gts, labels, max_proposals)
            per_method[method] = {
                "mabo": round(q["mabo"], 4),
                "recall@0.5": round(q["recall@0.5"], 4),
                "num_proposals": round(q["num_proposals"], 1),
                "seconds_per_image": round(float(np.mean(seconds)), 4),
                "abo_per_class": {str(c): round(v, 4) for c, v in q["abo_per_class"].items()},
            }
            print(
                f"{root.name:<28} {method:<18} MABO {q['mabo']:.3f}  "
                f"recall@0.5 {q['recall@0.5']:.3f}  {q['num_proposals']:7.1f} proposals  "
                f"{np.mean(seconds):.3f} s/image",
                flush=True,
            )
        out["sets"][root.name] = {
            "root": str(root),
            "num_images": len(images),
            "num_gt_boxes": int(sum(len(g) for g in gts)),
            "methods": per_method,
        }
    for mode, paper in PAPER_VOC2007.items():
        print(
            f"{'paper, VOC 2007 test':<28} {mode:<18} MABO {paper['mabo']:.3f}  "
            f"recall@0.5 {paper['recall@0.5']:.3f}  {paper['num_proposals']:7d} proposals"
        )
    return out


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """``python -m rcnn_steps.selective_search evaluate | quality ...`` (``prog``: the name
    its help and errors show; ``python -m rcnn_steps selective-search`` passes its own)."""
    parser = argparse.ArgumentParser(prog=prog or "python -m rcnn_steps.selective_search")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="recall vs proposals and s/image, ours vs OpenCV")
    ev.add_argument("--out", type=Path, default=results_dir() / "selective_search.json")
    ev.add_argument("--num-images", type=int, default=30)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--threads", type=int, default=2)
    qu = sub.add_parser(
        "quality", help="MABO and recall@0.5 (the paper's Table 5 measures) on synthetic sets"
    )
    qu.add_argument(
        "--root",
        nargs="+",
        default=None,
        help="synthetic set folders (default: the book's set and its hard twin)",
    )
    qu.add_argument("--out", type=Path, default=results_dir() / "selective_search_hard.json")
    qu.add_argument("--num-images", type=int, default=100)
    qu.add_argument("--methods", nargs="+", default=["ours-fast", "opencv-fast"], choices=METHODS)
    qu.add_argument("--max-proposals", type=int, default=2000)
    qu.add_argument("--seed", type=int, default=0)
    qu.add_argument("--threads", type=int, default=1)
    add_debug_argument(parser, ev, qu)
    args = parser.parse_args(argv)
    if args.command == "quality" and (args.num_images < 1 or args.max_proposals < 1):
        parser.error("--num-images and --max-proposals must be at least 1")
    return run_command(lambda args: _command(parser, args), args)


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    set_threads(args.threads)
    started = time.time()
    if args.command == "quality":
        try:
            results = quality(
                args.root, args.num_images, args.methods, args.max_proposals, args.seed
            )
        except FileNotFoundError as e:
            parser.error(str(e))
    else:
        results = evaluate(num_images=args.num_images, seed=args.seed)
    write_results(args.out, results, preset=None, seeds=[args.seed], started=started)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
