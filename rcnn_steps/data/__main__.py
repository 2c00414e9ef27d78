"""Command line: ``python -m rcnn_steps.data synth --out DIR ...`` writes the synthetic
set; ``python -m rcnn_steps.data check --images DIR --annotations FILE`` reads a COCO
folder through :class:`~rcnn_steps.data.CocoDataset` and reports what it holds."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from rcnn_steps.data.coco import CocoDataset, DatasetError
from rcnn_steps.data.synth import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rcnn_steps.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="write the synthetic COCO-format set")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--num-train", type=int, default=1000)
    s.add_argument("--num-val", type=int, default=200)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-objects", type=int, default=5)
    s.add_argument("--workers", type=int, default=None, help="processes (default: 2)")
    c = sub.add_parser("check", help="read a COCO folder and summarise it")
    c.add_argument("--images", required=True, help="folder of the image files")
    c.add_argument("--annotations", required=True, help="instances_*.json")
    c.add_argument("--read-images", type=int, default=20, help="how many images to decode")
    args = parser.parse_args(argv)

    if args.command == "synth":
        start = time.time()
        try:
            out = generate(
                args.out,
                num_train=args.num_train,
                num_val=args.num_val,
                size=args.size,
                seed=args.seed,
                workers=args.workers,
                max_objects=args.max_objects,
            )
        except ValueError as e:
            parser.error(str(e))
        print(
            f"wrote {args.num_train} train and {args.num_val} val images of "
            f"{args.size}x{args.size} px to {out} in {time.time() - start:.1f} s"
        )
        return 0

    try:
        ds = CocoDataset(args.images, args.annotations, include_crowd=True)
        for i in range(min(args.read_images, len(ds))):
            ds[i]
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = Counter(a["category_id"] for a in ds.coco.anns.values())
    print(ds)
    for cat in ds.categories:
        print(f"  {cat['id']:>3} {cat['name']:<16} {counts.get(cat['id'], 0):>7} annotations")
    print(f"read {min(args.read_images, len(ds))} images without error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
