"""Command line: ``python -m rcnn_steps.data synth --out DIR ...`` writes the synthetic
set; ``python -m rcnn_steps.data example --out DIR`` the custom-data example of
data/README.md; ``python -m rcnn_steps.data check --images DIR --annotations FILE`` reads a COCO
folder through :class:`~rcnn_steps.data.CocoDataset` and reports what it holds, and
``python -m rcnn_steps.data check ROOT`` does so for every ``ROOT/annotations/
instances_<split>.json`` with its images in ``ROOT/<split>/`` (the synthetic set's layout,
and COCO 2017's). A data error is reported in one line (``error: ...``, exit status 1;
other bad input, such as an --out that cannot be written, status 2; ``--debug`` shows the
traceback)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from rcnn_steps.data.coco import CocoDataset, DatasetError
from rcnn_steps.data.example import make_example
from rcnn_steps.data.synth import SCENE_STYLES, generate
from rcnn_steps.utils import add_debug_argument, run_command


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """``python -m rcnn_steps.data synth | example | check ...`` (``prog``: the name its help
    and errors show; ``python -m rcnn_steps data`` passes its own)."""
    parser = argparse.ArgumentParser(prog=prog or "python -m rcnn_steps.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="write the synthetic COCO-format set")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--num-train", type=int, default=1000)
    s.add_argument("--num-val", type=int, default=200)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.add_argument(
        "--layout-size",
        type=int,
        default=None,
        help="draw the scenes of the set of this size at --size (e.g. --size 256 "
        "--layout-size 128: the 128 px set's objects, each covering 4x the pixels)",
    )
    s.add_argument(
        "--style",
        default="flat",
        choices=SCENE_STYLES,
        help="how objects are painted: flat (one colour each, crisp edges; the book's set) "
        "or hard (the same scenes and annotations, objects camouflaged, shaded, in "
        "several colours, with soft edges)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-objects", type=int, default=5)
    s.add_argument("--workers", type=int, default=None, help="processes (default: 2)")
    e = sub.add_parser("example", help="write the custom-data example (data/README.md)")
    e.add_argument("--out", required=True, help="a new folder")
    e.add_argument("--num-train", type=int, default=40)
    e.add_argument("--num-val", type=int, default=12)
    e.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("check", help="read a COCO folder and summarise it")
    c.add_argument(
        "root",
        nargs="?",
        help="a folder holding annotations/instances_<split>.json and <split>/ image folders",
    )
    c.add_argument("--images", help="folder of the image files")
    c.add_argument("--annotations", help="instances_*.json")
    c.add_argument("--read-images", type=int, default=20, help="how many images to decode")
    add_debug_argument(parser, s, e, c)
    args = parser.parse_args(argv)
    return run_command(lambda args: _command(parser, args), args)


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
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
                layout_size=args.layout_size,
                scene_style=args.style,
                max_objects=args.max_objects,
            )
        except ValueError as e:
            parser.error(str(e))
        drawn_from = ""
        if args.layout_size not in (None, args.size):
            drawn_from = f" (the scenes of the {args.layout_size} px set)"
        if args.style != "flat":
            drawn_from += f", {args.style} style"
        print(
            f"wrote {args.num_train} train and {args.num_val} val images of "
            f"{args.size}x{args.size} px{drawn_from} to {out} in {time.time() - start:.1f} s"
        )
        return 0

    if args.command == "example":
        try:
            out = make_example(args.out, args.num_train, args.num_val, args.seed)
        except FileExistsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"wrote the example set ({args.num_train} train, {args.num_val} val) to {out}")
        return 0

    if (args.root is None) == (args.images is None and args.annotations is None):
        parser.error("check takes either ROOT or --images DIR --annotations FILE")
    if args.root is None:
        if args.images is None or args.annotations is None:
            parser.error("check needs both --images DIR and --annotations FILE")
        pairs = [(Path(args.images), Path(args.annotations))]
    else:
        root = Path(args.root)
        files = sorted((root / "annotations").glob("instances_*.json"))
        if not files:
            print(
                f"error: {root / 'annotations'} holds no instances_<split>.json file; "
                "pass --images DIR --annotations FILE for another layout",
                file=sys.stderr,
            )
            return 1
        pairs = [(root / f.stem.removeprefix("instances_"), f) for f in files]
    return max(
        check(images_dir, ann_file, args.read_images, debug=args.debug)
        for images_dir, ann_file in pairs
    )


def check(images: Path, annotations: Path, read_images: int, debug: bool = False) -> int:
    """Read one split and print what it holds; a data error is one line on stderr (its
    traceback with ``debug``)."""
    try:
        ds = CocoDataset(images, annotations, include_crowd=True)
        for i in range(min(read_images, len(ds))):
            ds[i]
    except DatasetError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = Counter(a["category_id"] for a in ds.coco.anns.values())
    print(ds)
    for cat in ds.categories:
        print(f"  {cat['id']:>3} {cat['name']:<16} {counts.get(cat['id'], 0):>7} annotations")
    print(f"read {min(read_images, len(ds))} images without error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
