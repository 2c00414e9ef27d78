"""Selective search, ours against OpenCV's (cv2.ximgproc), timed and scored in one run.

python benchmarks/bench_selective_search.py [--num-images 20]

Prints seconds per image, proposals per image and recall at IoU 0.5 / 0.7 for several
numbers of proposals, on the first images of the synthetic val set, every method measured
in the same process on the same images.
"""

from __future__ import annotations

import argparse

from rcnn_steps.experiments.selective_search import METHODS, evaluate
from rcnn_steps.utils import machine_info, set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    result = evaluate(num_images=args.num_images, methods=METHODS)
    counts = result["num_proposals"]
    info = machine_info()
    print(f"\n{result['num_images']} images, {result['num_gt_boxes']} objects; {info['cpu']}")
    head = " ".join(f"{n:>6}" for n in counts)
    print(f"{'method':<20} {'s/img':>7} {'props':>6}  IoU  recall at n = {head}")
    for name, m in result["methods"].items():
        for t in ("0.5", "0.7"):
            recall = " ".join(f"{r:6.3f}" for r in m[f"recall@{t}"])
            first = f"{name:<20} {m['seconds_per_image']:7.3f} {m['mean_proposals_per_image']:6.0f}"
            print(f"{first if t == '0.5' else '':<35}  {t}  {'':>14}{recall}")


if __name__ == "__main__":
    main()
