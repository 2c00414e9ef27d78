"""The command line of the library: ``python -m rcnn_steps <command>``.

- ``train``: train any detector of the book (by preset) on any COCO-format folder, with
  progress bars, metrics in JSON lines, atomic checkpoints, ``--resume``, periodic COCO
  evaluation; under ``torchrun --nproc_per_node N`` in N processes (DDP);
- ``predict``: a trained run's detections on a folder of images, written as JSON and
  drawn as PNGs;
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rcnn_steps.utils import CommandError, add_debug_argument, run_command

if TYPE_CHECKING:
    from rcnn_steps.engine import RunFolder

__all__ = ["evaluate_results_path", "load_run", "main"]

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
        raise CommandError(
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
            raise CommandError(
                f"--set takes FIELD=VALUE with a DetectorConfig field, got {item!r}"
                + ("" if not sep else f"; {name!r} is not a field")
            )
        try:
            overrides[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[name] = text
    return overrides


# ----------------------------------------------------------------------------------------
# train / predict on your own data

RUN_FILE = "run.json"  #: what a run folder says about itself (= engine.RunFolder.DESCRIPTION)

#: What ``train --resume`` must be given as the run was (its run.json): the same data and
#: the same feeding, else it would continue one run's training on other images, or label
#: its classes with other names. (The model config is checked again against the
#: checkpoint; the schedule may change, with a warning; the number of processes is
#: checked by the engine.)
RESUME_MUST_MATCH = (
    "preset",
    "config",
    "data.root",
    "data.splits",
    "data.class_names",
    "data.keypoint_names",
    "data.skeleton",
    "feeding.batch_size",
    "feeding.flip",
    "feeding.min_sizes",
    "feeding.max_size",
    "feeding.test_size",
)


def _check_train_arguments(args: argparse.Namespace) -> None:
    """Refuse, in one line, a ``train`` argument out of its range, a device this machine
    does not have, a run folder that cannot be one, and ``--resume`` with ``--overwrite``:
    before anything is read or written."""
    import math

    from rcnn_steps.engine import RunFolder

    finite = math.isfinite
    rules = [  # (argument, value, accepted?, what is accepted); None: the preset's default
        ("--lr", args.lr, lambda v: finite(v) and v > 0, "a positive number"),
        ("--max-iter", args.max_iter, lambda v: v >= 1, "at least 1"),
        ("--batch-size", args.batch_size, lambda v: v >= 1, "at least 1"),
        ("--eval-every", args.eval_every, lambda v: v >= 0, "0 (only at the end) or more"),
        ("--checkpoint-every", args.checkpoint_every, lambda v: v >= 1, "at least 1"),
        ("--num-eval-images", args.num_eval_images, lambda v: v >= 1, "at least 1 (or leave "
         "it out: all)"),
        ("--threads", args.threads, lambda v: v >= 1, "at least 1"),
        ("--loader-workers", args.loader_workers, lambda v: v >= 0, "0 (load in this "
         "process) or more"),
        ("--seed", args.seed, lambda v: 0 <= v < 2**31, "from 0 to 2147483647"),
    ]  # fmt: skip
    for name, value, accepted, what in rules:
        if value is not None and not accepted(value):
            raise CommandError(f"train: {name} {value}: must be {what}")
    if args.resume and args.overwrite:
        raise CommandError(
            "train: --resume continues the run in --out and --overwrite replaces it: pass one"
        )
    if args.device != "auto":
        _check_device(args.device)
    folder = RunFolder(args.out)
    folder.check()
    _refuse_replacing(folder, args)  # early, for a quick answer; again once it is locked


def _refuse_replacing(folder: RunFolder, args: argparse.Namespace) -> None:
    """A fresh start into a folder that holds a run is a mistake unless ``--resume`` or
    ``--overwrite`` says what to do with it."""
    if folder.holds_run() and not (args.resume or args.overwrite):
        raise CommandError(
            f"train: {folder.path} already holds a run ({RUN_FILE}, metrics or checkpoints); "
            "pass --resume to continue it, --overwrite to replace it, or another --out"
        )


def _claim_run_folder(
    folder: RunFolder, args: argparse.Namespace, describe: Callable[[], dict[str, Any]]
) -> None:
    """With ``folder`` locked and the run validated: refuse to replace a run unasked, or
    to resume a run with other data or feeding than its ``run.json`` records; delete
    the run's files on ``--overwrite``; write ``run.json`` (``describe()``) unless this
    continues a checkpoint that has one."""
    _refuse_replacing(folder, args)  # again, now that no other process can change it
    continues = args.resume and (folder.path / "last.pt").exists()
    description = describe()
    if continues:
        differ = folder.differences(description, RESUME_MUST_MATCH)
        if differ:
            raise CommandError(
                f"train --resume: the run in {folder.path} was trained on other data or "
                f"feeding ({'; '.join(differ)}): resume with its own --data, --splits, "
                "--preset, --set, --batch-size and --flip (see its run.json), or start a new "
                "run with another --out (or --overwrite)"
            )
    folder.claim(resume=args.resume, overwrite=args.overwrite)
    if not (continues and folder.description() is not None):
        folder.describe(description)


def _train_command(args: argparse.Namespace) -> int:
    import contextlib

    import torch

    from rcnn_steps.data import collate_fn
    from rcnn_steps.engine import (
        RunFolder,
        TrainConfig,
        distributed_sampler,
        init_distributed,
        process_rank,
        train,
    )
    from rcnn_steps.faster_rcnn import FasterRCNN
    from rcnn_steps.runner import (
        config_for_data,
        feeding,
        load_datasets,
        make_evaluator,
        schedule,
    )
    from rcnn_steps.utils import code_diff_hash, git_commit, set_threads

    # every check that needs no data, in every process before they meet (so none of them
    # can have written into --out yet)
    _check_train_arguments(args)
    if args.threads:
        set_threads(args.threads)
    rank, world, device = init_distributed(args.device)
    feed = feeding(args.preset)
    batch_size = args.batch_size or feed["batch_size"]
    config = config_for_data(
        args.preset,
        load_datasets(args.data, splits=tuple(args.splits))[1],
        _parse_overrides(args.set),
    )
    train_set, val_set = load_datasets(
        args.data,
        masks=config.masks,
        flip=feed["flip"] if args.flip is None else args.flip,
        splits=tuple(args.splits),
        min_sizes=feed["min_sizes"],
        max_size=feed["max_size"],
    )
    out = Path(args.out)
    sampler = distributed_sampler(train_set, seed=args.seed)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=args.loader_workers,
    )
    overrides = {"lr": args.lr} if args.lr is not None else {}
    train_cfg = TrainConfig(
        **{**schedule(args.preset, args.max_iter), **overrides},
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        out_dir=str(out),
        overwrite=args.overwrite,
        seed=args.seed,
        device=str(device),
        progress=not args.no_progress,
    )
    ids = val_set.image_ids[: args.num_eval_images] if args.num_eval_images else val_set.image_ids
    evaluate_fn = make_evaluator(
        val_set, ids, test_size=feed["test_size"], max_size=feed["max_size"]
    )
    torch.manual_seed(args.seed)  # the same initial weights in every process
    model = FasterRCNN(config)

    def describe() -> dict[str, Any]:
        return {
            "preset": args.preset,
            "config": config.to_dict(),
            "train_config": train_cfg.to_dict(),
            "feeding": {
                **feed,
                "flip": feed["flip"] if args.flip is None else args.flip,
                "batch_size": batch_size,
                "processes": world,
            },  # fmt: skip
            "data": {
                "root": str(Path(args.data).resolve()),
                "splits": list(args.splits),
                "class_names": train_set.class_names,
                "keypoint_names": train_set.keypoint_names,
                "skeleton": [list(p) for p in train_set.skeleton],
            },
            "command": " ".join(["python -m rcnn_steps", *sys.argv[1:]]),
            "commit": git_commit(),
            "code_diff_sha256": code_diff_hash(),
        }

    # Validated: now the folder, held by one process (the main one) while it writes.
    folder = RunFolder(out)
    with folder.lock() if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            _claim_run_folder(folder, args, describe)
        result = train(model, loader, train_cfg, evaluate_fn=evaluate_fn, resume=args.resume)
    if process_rank()[0] == 0:
        final = result.eval_history[-1] if result.eval_history else {}
        shown = {k: v for k, v in final.items() if k.endswith("/AP")}
        print(f"{out}: step {result.step}, " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    if world > 1:
        torch.distributed.barrier()  # no rank tears gloo down while another still uses it
        torch.distributed.destroy_process_group()
    return 0


def load_run(checkpoint: str | Path, device: str = "cpu"):
    """A trained model from a run's checkpoint (verified: :func:`rcnn_steps.engine.
    load_checkpoint`) and what the run says about itself (class names, keypoint names,
    skeleton, the feeding): ``(model in eval mode, run description)``. The description is
    the one stored in the file by ``export`` when there is one, else its folder's
    ``run.json``, else ``{}``."""
    import json

    from rcnn_steps.engine import load_checkpoint
    from rcnn_steps.faster_rcnn import DetectorConfig, FasterRCNN

    path = Path(checkpoint)
    ckpt = load_checkpoint(path, map_location=device)
    config = (ckpt.get("model_description") or {}).get("config")
    if not config:
        raise CommandError(
            f"{path} does not say which model it holds (no model config): it was not "
            "written by `python -m rcnn_steps train`"
        )
    fields = {f for f in DetectorConfig.__dataclass_fields__}
    model = FasterRCNN(DetectorConfig(**{k: v for k, v in config.items() if k in fields}))
    model.load_state_dict(ckpt["model"])
    run_file = path.parent / RUN_FILE
    run = ckpt.get("run") or (json.loads(run_file.read_text()) if run_file.exists() else {})
    return model.to(device).eval(), run


def data_description(root: str | Path, split: str = "train") -> dict:
    """What a run records of its data (``run.json``'s ``"data"``): the root, the class
    names, the keypoint names and the skeleton of ``root/annotations/instances_<split>.
    json``. A missing file is an error that says what was looked for."""
    from rcnn_steps.data import CocoDataset

    root = Path(root)
    annotations = root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        raise CommandError(
            f"--data {root}: no {annotations.relative_to(root)} there; pass the folder that "
            "holds annotations/ (the set the model was trained on)"
        )
    dataset = CocoDataset(root / split, annotations, load_masks=False)
    return {
        "root": str(root.resolve()),
        "splits": [split],
        "class_names": dataset.class_names,
        "keypoint_names": dataset.keypoint_names,
        "skeleton": [list(p) for p in dataset.skeleton],
    }


#: The image files ``predict`` reads (PIL decodes them all), in folders and sub-folders.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
#: What ``predict`` writes beside its outputs: the list of the files it wrote, so that
#: ``--overwrite`` removes those and nothing else.
PREDICT_MANIFEST = "predict_manifest.json"


def _inside(a: Path, b: Path) -> bool:
    """Whether path ``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def _check_device(device: str) -> None:
    """A one-line error for a device this machine does not have (e.g. ``cuda`` without a
    GPU), before any checkpoint is read."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CommandError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(
                f"--device {device}: CUDA is not available here (no GPU, or a CPU-only "
                "build of torch); run with --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CommandError(
                f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type != "cpu":  # mps, xpu, ...: the backend says whether it is here
        backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
        if not getattr(backend, "is_available", lambda: False)():
            raise CommandError(
                f"--device {device}: no {dev.type} device here; run with --device cpu (or "
                "cuda on a machine with a GPU)"
            )


def _predict_inputs(images: Sequence[Path], out: Path) -> list[tuple[Path, Path]]:
    """The image files of ``images`` (files, folders and their sub-folders) with the
    drawing each gets under ``out`` (sub-folders mirrored, ``.png``). Refuses a missing
    input and an ``out`` that is, holds or lies inside an input; names skipped files."""
    missing = [str(p) for p in images if not p.exists()]
    if missing:
        raise CommandError(f"predict: {', '.join(missing)} does not exist")
    where = out.resolve()
    for p in images:
        if _inside(where, p.resolve()) or _inside(p.resolve(), where):
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


def _predict_command(args: argparse.Namespace) -> int:
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from PIL import Image

    from rcnn_steps import viz
    from rcnn_steps.data.coco import read_image
    from rcnn_steps.data.transforms import ResizeShortestSide
    from rcnn_steps.evaluation import detections_to_coco
    from rcnn_steps.runner import _resized_back, trim_keypoints
    from rcnn_steps.utils import atomic_write_bytes

    out = Path(args.out)
    pairs = _predict_inputs(args.images, out)
    _clear_predictions(out, args.overwrite, clear=False)  # the checks only
    _check_device(args.device)
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
    names = data.get("class_names")
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

    keypoint_labels = [i for i, c in enumerate(model.config.keypoint_counts, 1) if c]
    everything = []
    for i, (file, drawing) in enumerate(readable):
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
            i, kept["boxes"], kept["scores"], kept["labels"], None,
            masks=kept.get("masks"), keypoints=kept.get("keypoints"),
        )  # fmt: skip
        trim_keypoints(results, kept["labels"], model.config.keypoint_counts)
        for r in results:
            r["file_name"] = drawing.with_name(file.name).as_posix()  # sub/x.jpg
            if names:
                r["class_name"] = names[r["category_id"]]
        everything += results
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        viz.draw_instances(image, det, names, args.score_threshold, data.get("skeleton", ()),
                           data.get("keypoint_names") or None, keypoint_labels, ax=ax)  # fmt: skip
        (out / drawing).parent.mkdir(parents=True, exist_ok=True)
        record(drawing)
        fig.savefig(out / drawing, bbox_inches="tight")
        plt.close(fig)
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rcnn_steps <command>``: ``train``, ``predict``, ``evaluate`` or ``export``
    (see the module's docstring). A user's error (bad input, a missing or damaged file)
    is one line on stderr and exit status 2; Ctrl-C is one line and 130; ``--debug``
    shows the traceback instead (:func:`rcnn_steps.utils.run_command`)."""
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

    from rcnn_steps.runner import PRESETS

    tr = sub.add_parser("train", help="train a detector on a COCO-format folder")
    tr.add_argument(
        "--data",
        type=Path,
        required=True,
        help="a folder with <split>/ images and annotations/instances_<split>.json",
    )
    tr.add_argument(
        "--splits",
        nargs=2,
        default=["train", "val"],
        metavar=("TRAIN", "VAL"),
        help="default: train val (COCO 2017: train2017 val2017)",
    )
    tr.add_argument("--preset", choices=sorted(PRESETS), default="cpu_mask")
    tr.add_argument("--out", type=Path, required=True, help="the run folder, e.g. runs/mine")
    tr.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a DetectorConfig field (repeatable)",
    )
    tr.add_argument("--max-iter", type=int, default=None, help="default: the preset's")
    tr.add_argument("--lr", type=float, default=None, help="default: the preset's")
    tr.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per batch per process (default: the preset's)",
    )
    tr.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips (default: the preset's)",
    )
    tr.add_argument(
        "--eval-every", type=int, default=0, help="evaluate every N steps (and at the end)"
    )
    tr.add_argument("--num-eval-images", type=int, default=None, help="default: all")
    tr.add_argument("--checkpoint-every", type=int, default=500)
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    tr.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    tr.add_argument("--threads", type=int, default=None, help="torch's CPU threads")
    tr.add_argument("--loader-workers", type=int, default=0)
    tr.add_argument("--no-progress", action="store_true")

    pr = sub.add_parser("predict", help="draw and write a trained run's detections")
    pr.add_argument("--checkpoint", type=Path, required=True, help="e.g. runs/mine/last.pt")
    pr.add_argument("--images", nargs="+", type=Path, required=True, help="image files or folders")
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--score-threshold", type=float, default=0.5)
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--overwrite", action="store_true")

    ex = sub.add_parser("export", help="a weights-only copy of a checkpoint, to share or commit")
    ex.add_argument("--checkpoint", type=Path, required=True, help="e.g. runs/mine/last.pt")
    ex.add_argument("--out", type=Path, required=True, help="e.g. results/final_model.pt")
    ex.add_argument(
        "--data", type=Path, default=None,
        help="the set it was trained on, to record its class names when the checkpoint's "
        "folder has no run.json (e.g. a grid run kept with --keep-runs)",
    )  # fmt: skip
    ex.add_argument("--overwrite", action="store_true")
    add_debug_argument(parser, ev, tr, pr, ex)
    args = parser.parse_args(argv)
    commands = {"evaluate": _evaluate_command, "train": _train_command,
                "predict": _predict_command, "export": _export_command}  # fmt: skip

    def interrupted() -> str:
        # run_command calls this while it handles the KeyboardInterrupt: train's says
        # where the run stopped and which checkpoint holds it
        stopped = sys.exc_info()[1]
        if args.command != "train":
            return "interrupted"
        return _train_interrupted(args, argv if argv is not None else sys.argv[1:], stopped)

    return run_command(commands[args.command], args, interrupted)


def _train_interrupted(args: argparse.Namespace, argv: Sequence[str], stopped) -> str:
    """The line a Ctrl-C of ``train`` ends with: the step it stopped at, the checkpoint
    that holds the run and the command that continues it (this one, with ``--resume``)."""
    import shlex

    last = Path(args.out) / "last.pt"
    checkpoint = getattr(stopped, "checkpoint", None) or (str(last) if last.exists() else None)
    again = [a for a in argv if a != "--overwrite"]
    again = shlex.join(
        ["python", "-m", "rcnn_steps", *again, *(["--resume"] if "--resume" not in again else [])]
    )
    if checkpoint is not None:
        held = getattr(stopped, "checkpoint_step", None)
        at = f" after step {stopped.step}" if hasattr(stopped, "step") else ""
        holds = f" (step {held})" if held is not None else ""
        return f"interrupted{at}; {checkpoint}{holds} holds the run; continue it with: {again}"
    if (Path(args.out) / RUN_FILE).exists():
        return f"interrupted before the first checkpoint; start the run again with: {again}"
    return "interrupted before training began; nothing was written"


def _export_command(args: argparse.Namespace) -> int:
    import json

    from rcnn_steps.engine import export_weights

    run_file = args.checkpoint.parent / RUN_FILE
    run = json.loads(run_file.read_text()) if run_file.exists() else None
    if args.data is not None:
        run = {**(run or {}), "data": data_description(args.data)}
    try:
        out = export_weights(args.checkpoint, args.out, overwrite=args.overwrite, run=run)
    except FileExistsError:
        raise CommandError(
            f"export: {args.out} exists: pass --overwrite to replace it, or another --out"
        ) from None
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): load it with `predict`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
