"""``python -m rcnn_steps predict``: a trained run's detections on a folder of images,
written as COCO results (``detections.json``, with each file's name and each class's name)
and drawn as PNGs; :func:`mask_rles` and :func:`drawn_detections` are its masks as COCO
RLEs and its drawings' detections (chapter 08 draws with them too). Inputs are checked
before the model is loaded; ``--overwrite`` removes only the files an earlier ``predict``
wrote (its manifest, :data:`PREDICT_MANIFEST`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rcnn_steps.cli.checks import check_device, is_inside, path_argument
from rcnn_steps.cli.runs import RUN_FILE, load_run
from rcnn_steps.modeling.mask_head import paste_masks_in_windows
from rcnn_steps.utils import CommandError, atomic_write_bytes

#: The image files ``predict`` reads (PIL decodes them all), in folders and sub-folders.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
#: What ``predict`` writes beside its outputs: the list of the files it wrote, so that
#: ``--overwrite`` removes those and nothing else.
PREDICT_MANIFEST = "predict_manifest.json"


#: The longer side, in pixels, at which ``predict`` draws (its figures are 400 px wide):
#: a 3000 x 2000 photo is drawn from an 800 x 533 copy, its masks pasted at that size.
DRAWING_SIDE = 800


def add_parser(sub) -> argparse.ArgumentParser:
    """``predict``'s arguments, as a subcommand of ``sub`` (the top parser's subparsers)."""
    pr = sub.add_parser(
        "predict",
        help="draw and write a trained run's detections",
        description="Writes detections.json (COCO results: category_id is the data's own "
        "category id; image_id is the dataset's id when every image is one of the run's val "
        "images, by file name and size, else each file's position among the inputs, each "
        "folder sorted; file_name and class_name name the file and the class) and one "
        "drawing per image.",
    )
    pr.add_argument(
        "--checkpoint", type=path_argument, required=True, help="e.g. runs/mine/last.pt"
    )
    pr.add_argument(
        "--images", nargs="+", type=path_argument, required=True, help="image files or folders"
    )
    pr.add_argument("--out", type=path_argument, required=True)
    pr.add_argument("--score-threshold", type=float, default=0.5)
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--overwrite", action="store_true")

    return pr


def _predict_inputs(images: Sequence[Path], out: Path) -> list[tuple[Path, Path]]:
    """The image files of ``images`` (files, folders and their sub-folders) with the
    drawing each gets under ``out`` (sub-folders mirrored, ``.png``). Refuses a missing
    input and an ``out`` that is, holds or lies inside an input; names skipped files."""
    missing = [str(p) for p in images if not p.exists()]
    if missing:
        raise CommandError(f"predict: {', '.join(missing)} does not exist")
    where = out.resolve()
    for p in images:
        if is_inside(where, p.resolve()) or is_inside(p.resolve(), where):
            raise CommandError(
                f"predict: --out {out} and --images {p} overlap (one is, holds or lies inside "
                "the other): the drawings could replace your images; pick an --out elsewhere"
            )
    pairs: list[tuple[Path, Path]] = []
    skipped: list[Path] = []
    taken: set[Path] = set()
    for p in images:
        found = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in found:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(f)
                continue
            rel = Path(f.name) if f == p else f.relative_to(p)
            drawing = rel.with_suffix(".png")
            n = 1
            while drawing in taken:  # a.jpg beside a.png, or the same name in two inputs
                drawing = rel.with_name(f"{rel.stem}_{n}.png")
                n += 1
            taken.add(drawing)
            pairs.append((f, drawing))
    if skipped:
        kinds = sorted({f.suffix.lower() or f.name for f in skipped})
        print(f"predict: skipped {len(skipped)} file(s) that are not images "
              f"({', '.join(kinds[:8])}), e.g. {skipped[0]}", file=sys.stderr)  # fmt: skip
    if not pairs:
        raise CommandError(
            f"predict: no images ({', '.join(IMAGE_SUFFIXES)}) in "
            f"{', '.join(str(p) for p in images)}"
        )
    return pairs


def _clear_predictions(out: Path, overwrite: bool, clear: bool = True) -> None:
    """Make ``out`` ready for ``predict``: refuse a file, or a non-empty folder without
    ``overwrite``; with it (and ``clear``), remove the files an earlier ``predict`` listed
    in its manifest (and sub-folders it left empty), never other files."""
    import json

    if out.exists() and not out.is_dir():
        raise CommandError(f"predict: --out {out} is a file; pass a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise CommandError(
            f"predict: {out} is not empty; pass --overwrite to write into it, or another --out"
        )
    manifest = out / PREDICT_MANIFEST
    if not clear or not manifest.is_file():
        return
    root = out.resolve()
    for name in json.loads(manifest.read_text()).get("files", []):
        path = (out / name).resolve()
        if root in path.parents and path.is_file():
            path.unlink()
            for folder in path.parents:
                if folder == root or any(folder.iterdir()):
                    break
                folder.rmdir()


def mask_rles(probs, boxes, size, aligned: bool) -> list[dict]:
    """COCO RLEs (``counts`` as str) of ``(D, 1, M, M)`` mask probabilities pasted into an
    image of ``size`` (H, W) at ``boxes`` and cut at 0.5: one mask at a time, each over
    its box's window (:func:`rcnn_steps.modeling.mask_head.paste_masks_in_windows`), so memory is
    one ``H x W`` byte canvas however many detections there are."""
    import numpy as np
    from pycocotools import mask as mask_utils

    canvas = np.zeros(tuple(size), dtype=np.uint8, order="F")
    rles = []
    for window, (top, left) in paste_masks_in_windows(probs, boxes, size, aligned=aligned):
        canvas[:] = 0
        h, w = window.shape
        canvas[top : top + h, left : left + w] = (window >= 0.5).numpy()
        rle = mask_utils.encode(canvas)
        rles.append({"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")})
    return rles


def drawn_detections(image, det: dict, mask_branch=None):
    """``(image, detections)`` as ``predict`` draws them: at most :data:`DRAWING_SIDE`
    pixels on the longer side (boxes and keypoints scaled with the image), masks pasted
    at that size from ``det["mask_probs"]`` when the model left them unpasted."""
    import torch

    h, w = image.shape[-2:]
    scale = min(1.0, DRAWING_SIDE / max(h, w))
    shown = dict(det)
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = torch.nn.functional.interpolate(
            image[None], size=size, mode="bilinear", antialias=True, align_corners=False
        )[0]
        sy, sx = size[0] / h, size[1] / w
        shown["boxes"] = det["boxes"] * torch.tensor([sx, sy, sx, sy])
        if "keypoints" in det:
            kps = det["keypoints"].clone()
            kps[..., 0] *= sx
            kps[..., 1] *= sy
            shown["keypoints"] = kps
    if "mask_probs" in det:
        size = image.shape[-2:]
        masks = torch.zeros((len(det["boxes"]), *size), dtype=torch.bool)
        windows = paste_masks_in_windows(
            shown.pop("mask_probs"), shown["boxes"], size, aligned=mask_branch.aligned
        )
        for mask, (window, (top, left)) in zip(masks, windows, strict=True):
            mask[top : top + window.shape[0], left : left + window.shape[1]] = window >= 0.5
        shown["masks"] = masks
    return image, shown


def _run_categories(data: dict, num_classes: int, keypoint_counts: Sequence[int]) -> list[dict]:
    """The model's classes, label 1 first: each one's category ``id`` in the data, ``name``
    (None when unknown), ``keypoints`` and 0-based ``skeleton``, from ``run.json``'s
    ``categories``. A ``run.json`` written before those were recorded has only the class
    names and one keypoint set: its category ids are taken to be the labels, and every
    keypoint class gets that set (what ``predict`` did then). Refuses a description whose
    class count is not the model's (a ``run.json`` from another run)."""
    categories = data.get("categories")
    if not categories:
        names = data.get("class_names") or []
        counts = list(keypoint_counts) + [0] * num_classes
        categories = [
            {
                "id": label,
                "name": names[label] if label < len(names) else None,
                "keypoints": list(data.get("keypoint_names") or []) if counts[label - 1] else [],
                "skeleton": list(data.get("skeleton") or []) if counts[label - 1] else [],
            }
            for label in range(1, num_classes + 1)
        ]
    if len(categories) != num_classes:
        raise CommandError(
            f"predict: the run's description lists {len(categories)} categories but the "
            f"model has {num_classes} classes: the {RUN_FILE} beside the checkpoint is "
            "another run's; use the run's own folder, or an exported copy"
        )
    return categories


def _val_image_ids(data: dict) -> dict[str, tuple[int, int, int] | None]:
    """The run's val images by file name: ``{name: (image id, width, height)}``, read from
    ``<root>/annotations/instances_<val split>.json`` as ``run.json`` names them (None
    for a name two images share); ``{}`` when the run has no val split or the file is not
    there any more (a model predicting away from its data)."""
    import json

    splits = data.get("splits") or []
    if len(splits) < 2 or not data.get("root"):
        return {}
    path = Path(data["root"]) / "annotations" / f"instances_{splits[1]}.json"
    try:
        images = json.loads(path.read_text()).get("images", [])
    except (OSError, ValueError, AttributeError):
        return {}
    found: dict[str, tuple[int, int, int] | None] = {}
    for img in images:
        name = Path(str(img.get("file_name", ""))).name
        entry = (img.get("id"), img.get("width"), img.get("height"))
        found[name] = None if name in found else entry
    return found


def command(args: argparse.Namespace) -> int:
    """``predict``: detections on image files, as COCO results plus ``file_name`` and
    ``class_name``, and one drawing per image. ``category_id`` is the data's own category
    id (from ``run.json``'s ``categories``), and each class is drawn with its own keypoint
    names and skeleton. ``image_id``: when every image read is one of the run's val images
    (same file name and size as in its annotation file), the dataset's image id, so that
    ``detections.json`` is COCO results for those images; otherwise each file's position
    (0, 1, ...) among the inputs (in the order given, each folder sorted), for every file
    (never a mix, whose ids could collide), and ``file_name`` says which file it is."""
    import json
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from PIL import Image

    # local: the command line's start-up (viz loads matplotlib: 0.4 s)
    from rcnn_steps import viz
    from rcnn_steps.data.coco import read_image
    from rcnn_steps.data.transforms import ResizeShortestSide
    from rcnn_steps.evaluation import detections_to_coco
    from rcnn_steps.experiments.runner import _resized_back, trim_keypoints

    if not (math.isfinite(args.score_threshold) and 0 <= args.score_threshold <= 1):
        raise CommandError(
            f"predict: --score-threshold {args.score_threshold:g}: must be a score from 0 to "
            "1 (detections scored below it are left out; 0 keeps them all)"
        )
    out = Path(args.out)
    pairs = _predict_inputs(args.images, out)
    _clear_predictions(out, args.overwrite, clear=False)  # the checks only
    check_device(args.device)
    model, run = load_run(args.checkpoint, args.device)
    if not run:
        raise CommandError(
            f"predict: {args.checkpoint} carries no run description and there is no "
            f"{RUN_FILE} beside it ({args.checkpoint.parent / RUN_FILE}), so its class names "
            f"and image size are unknown: copy the run folder's {RUN_FILE} next to it, or "
            "make a self-contained copy with `python -m rcnn_steps export --checkpoint "
            "RUN/last.pt --out FILE` (add --data SET for a run without run.json)"
        )
    data = run.get("data", {})
    categories = _run_categories(data, model.config.num_classes, model.config.keypoint_counts)
    names = ["__background__"] + [c["name"] for c in categories]
    label_to_category_id = [0] + [c["id"] for c in categories]
    val_images = _val_image_ids(data)
    position = {file: n for n, (file, _) in enumerate(pairs)}
    feed = run.get("feeding", {})
    resize = ResizeShortestSide(feed["test_size"], feed.get("max_size")) if feed.get(
        "test_size"
    ) else None  # fmt: skip
    failed: list[tuple[Path, str]] = []

    def unreadable(file: Path, error: BaseException) -> None:
        reason = " ".join(str(error).split()) or type(error).__name__
        failed.append((file, reason))
        print(f"predict: skipped {file}: cannot be read ({reason})", file=sys.stderr)

    readable = []
    for file, drawing in pairs:  # a cheap first look: fake images fail before any work
        try:
            with Image.open(file) as im:
                im.verify()
            readable.append((file, drawing))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            unreadable(file, e)
    _clear_predictions(out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    manifest = {"command": " ".join(["python -m rcnn_steps", *sys.argv[1:]]), "files": written}

    def record(name: Path) -> None:
        written.append(name.as_posix())
        text = json.dumps(manifest, indent=1) + "\n"
        atomic_write_bytes(out / PREDICT_MANIFEST, text.encode())

    mask_branch = getattr(model.roi_heads, "mask_branch", None)
    if mask_branch is not None:
        mask_branch.paste = False  # pasted below, one mask at a time (bounded memory)
    everything = []
    dataset_ids: list[int | None] = []  # each file's id among the run's val images
    for file, drawing in readable:
        try:
            image = read_image(file)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # truncated, ...
            unreadable(file, e)
            continue
        size = image.shape[-2:]
        batch, scale = image, None
        if resize is not None:
            batch, resized = resize(image, {})
            scale = resized["scale"]
        with torch.no_grad():
            det = model([batch.to(args.device)])[0]
        if scale is not None:
            det = _resized_back(det, scale, size)
        det = {k: v.cpu() for k, v in det.items()}
        keep = det["scores"] >= args.score_threshold
        kept = {k: v[keep] for k, v in det.items()}
        results = detections_to_coco(
            position[file], kept["boxes"], kept["scores"], kept["labels"],
            label_to_category_id, keypoints=kept.get("keypoints"),
        )  # fmt: skip
        trim_keypoints(results, kept["labels"], model.config.keypoint_counts)
        if mask_branch is not None:
            rles = mask_rles(kept["mask_probs"], kept["boxes"], size, mask_branch.aligned)
            for r, rle in zip(results, rles, strict=True):
                r["segmentation"] = rle
        for r, label in zip(results, kept["labels"].tolist(), strict=True):
            r["file_name"] = drawing.with_name(file.name).as_posix()  # sub/x.jpg
            if names[label] is not None:
                r["class_name"] = names[label]
        everything.append(results)
        known = val_images.get(file.name)
        same_size = known is not None and tuple(known[1:]) == (int(size[1]), int(size[0]))
        dataset_ids.append(known[0] if same_size else None)
        shown_image, shown = drawn_detections(image, kept, mask_branch)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        shown_names = names if any(names[1:]) else None  # an old run without class names
        viz.draw_instances(shown_image, shown, shown_names, args.score_threshold, ax=ax)
        _draw_keypoints_by_class(ax, shown, categories, args.score_threshold)
        (out / drawing).parent.mkdir(parents=True, exist_ok=True)
        record(drawing)
        fig.savefig(out / drawing, bbox_inches="tight")
        plt.close(fig)
    if dataset_ids and all(i is not None for i in dataset_ids):  # else positions, as made
        for results, image_id in zip(everything, dataset_ids, strict=True):
            for r in results:
                r["image_id"] = image_id
    everything = [r for results in everything for r in results]
    text = json.dumps(everything, indent=1) + "\n"
    record(Path("detections.json"))
    atomic_write_bytes(out / "detections.json", text.encode())
    done = len(pairs) - len(failed)
    print(f"{done} images, {len(everything)} detections above {args.score_threshold}: "
          f"{out / 'detections.json'} and one drawing per image in {out}")  # fmt: skip
    if failed:
        print(f"predict: {len(failed)} of {len(pairs)} images could not be read and were "
              f"skipped (named above), e.g. {failed[0][0]}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _draw_keypoints_by_class(ax, det: dict, categories: list[dict], threshold: float) -> None:
    """Each keypoint class's detections (score at least ``threshold``) drawn with that
    class's own keypoint names and skeleton (a kite's, not the arrow's)."""
    # local: the command line's start-up (viz loads matplotlib: 0.4 s)
    from rcnn_steps import viz

    if "keypoints" not in det:
        return
    shown = det["scores"] >= threshold
    for label, category in enumerate(categories, 1):
        k = len(category.get("keypoints") or ())
        mine = shown & (det["labels"] == label)
        if k and mine.any():
            viz.draw_keypoints(ax, det["keypoints"][mine][:, :k], category.get("skeleton") or (),
                               names=category["keypoints"])  # fmt: skip
