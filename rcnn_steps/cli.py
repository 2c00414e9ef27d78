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
rcnn_steps.detectors.sliding_window``, ``rcnn``, ``selective_search``, ``fast_rcnn``,
``ablations``). This module sits at the top with :mod:`rcnn_steps.experiments.runner`, and reads the
presets (``--preset``: model, schedule, feeding, results file) from their records in
:mod:`rcnn_steps.experiments`; nothing imports it.
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


def evaluate_results_path(preset: str) -> Path:
    """Where ``evaluate --preset P`` writes by default: the results file of the preset's
    record (:mod:`rcnn_steps.experiments`) in ``results/``: ``faster_rcnn.json`` (cpu),
    ``faster_rcnn_fpn.json`` (cpu_fpn) or ``mask_rcnn.json`` (cpu_mask)."""
    from rcnn_steps.experiments import evaluated_presets
    from rcnn_steps.experiments import preset as preset_record
    from rcnn_steps.utils import results_dir

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
    from rcnn_steps.detectors.faster_rcnn import FasterRCNN
    from rcnn_steps.detectors.mask_rcnn import torchvision_mask_rcnn

    ours = FasterRCNN(config)  # draws the same random numbers as our model's construction
    return torchvision_mask_rcnn(config, copy.deepcopy(ours.backbone))


def _evaluate_command(args: argparse.Namespace) -> int:
    from rcnn_steps.experiments import preset as preset_record
    from rcnn_steps.experiments.evolution import add_row
    from rcnn_steps.experiments.runner import run_setting
    from rcnn_steps.utils import set_threads, write_results

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
    from rcnn_steps.experiments.runner import detector_config, schedule

    _check_at_least("evaluate", args, threads=1, timing_threads=1, num_eval_images=1, max_iter=1)
    if not 0 <= args.seed < 2**32:
        raise CommandError(f"evaluate: --seed must be in 0 .. 2**32 - 1, got {args.seed}")
    overrides = _parse_overrides(args.set)
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
    _check_out_file("evaluate", out, "results", overwrite=True)
    return overrides, config, out


def _check_at_least(command: str, args: argparse.Namespace, **minimums: int) -> None:
    """Refuse an integer option below its minimum (``threads=1``: ``--threads 0`` is an
    error, not torch's RuntimeError, nor a silent default); an option left out (None)
    passes."""
    for name, least in minimums.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise CommandError(f"{command}: {flag} must be at least {least}, got {value}")


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


#: What ``--out`` names, by kind: the suffixes accepted, what the command writes there,
#: what an existing file must be for the command to replace it, and an example name.
OUT_FILE_KINDS: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "results": ((".json",), "a JSON results file",
                "a results file written by `python -m rcnn_steps evaluate`", "results.json"),
    "weights": ((".pt", ".pth"), "a checkpoint",
                "a checkpoint written by export (a training checkpoint, which --resume needs, is "
                "never replaced)",
                "model.pt"),
}  # fmt: skip


def _is_evaluate_results(path: Path) -> bool:
    """Whether ``path`` is a results file that ``evaluate`` wrote (:func:`rcnn_steps.
    utils.write_results` with a :func:`rcnn_steps.experiments.runner.run_setting` record: a method,
    a config, metrics, and a preset ``evaluate`` offers)."""
    from rcnn_steps.experiments import evaluated_presets
    from rcnn_steps.utils import read_results

    try:
        payload = read_results(path)
    except (OSError, ValueError):
        return False
    if not isinstance(payload, dict):
        return False
    results, provenance = payload.get("results"), payload.get("provenance")
    return (
        isinstance(results, dict)
        and isinstance(provenance, dict)
        and provenance.get("preset") in evaluated_presets()
        and {"method", "config", "metrics"} <= set(results)
    )


def _is_exported_weights(path: Path) -> bool:
    """Whether ``path`` is a weights-only copy ``export`` wrote (a checkpoint that loads
    and verifies, and holds nothing but :data:`rcnn_steps.engine.EXPORTED_KEYS` and its
    run): not a training checkpoint, whose optimizer and position ``--resume`` needs."""
    from rcnn_steps.engine import EXPORTED_KEYS, load_checkpoint

    try:
        saved = load_checkpoint(path)
    except (OSError, ValueError):
        return False
    return set(saved) <= {*EXPORTED_KEYS, "run", "checksum"}


def _check_out_file(command: str, path: Path, kind: str, overwrite: bool = False) -> None:
    """Refuse, before any work, an ``--out`` file the command could not write or should
    not replace: a folder, a name without the kind's suffix (:data:`OUT_FILE_KINDS`), a
    place under a file or a folder this user cannot write, an existing file without
    ``overwrite``, and, even with it, an existing file that is not of the kind (a
    checkpoint is never replaced by a results file, nor a run's notes or a training
    checkpoint, which its run resumes from, by a weights-only copy)."""
    import os

    suffixes, writes, replaceable, example = OUT_FILE_KINDS[kind]
    if path.is_dir():
        raise CommandError(
            f"{command}: --out {path} is a folder; name a file, e.g. {path / example}"
        )
    if path.suffix.lower() not in suffixes:
        raise CommandError(
            f"{command}: --out {path} must end in {' or '.join(suffixes)} ({command} writes "
            f"{writes}), e.g. {path.with_suffix(suffixes[0])}"
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CommandError(f"{command}: --out {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"{command}: --out {path}: cannot write in {folder}; pick another")
    if not path.exists():
        return
    if not overwrite:
        raise CommandError(
            f"{command}: {path} exists: pass --overwrite to replace it, or another --out"
        )
    is_kind = _is_evaluate_results if kind == "results" else _is_exported_weights
    if not is_kind(path):
        raise CommandError(
            f"{command}: --out {path} exists and is not {replaceable}, so {command} will not "
            "replace it; pick another --out (or move that file away yourself)"
        )


def _parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["mask_aligned=true", "anchor_sizes=8,16"]`` -> ``{"mask_aligned": True,
    "anchor_sizes": (8, 16)}``: each value read and checked as its DetectorConfig field
    declares (:meth:`~rcnn_steps.detectors.config.DetectorConfig.parse_override`), so a value
    the field cannot take is refused here, naming ``--set``, the field and what it
    accepts, before any work starts. A field given twice is refused too (which one was
    meant?)."""
    from rcnn_steps.detectors.config import DetectorConfig

    overrides: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise CommandError(f"--set takes FIELD=VALUE with a DetectorConfig field, got {item!r}")
        if name in given:
            raise CommandError(
                f"--set {name} is given twice ({given[name]!r} and {item!r}); give it once"
            )
        try:
            overrides[name] = DetectorConfig.parse_override(name, text)
        except ValueError as e:
            raise CommandError(f"--set {item}: {e}") from None
        given[name] = item
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
        ("--timeout", args.timeout, lambda v: finite(v) and v >= 1, "a number of seconds, at "
         "least 1"),
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
    if not Path(args.data).is_dir():
        what = "is a file" if Path(args.data).exists() else "does not exist"
        raise CommandError(
            f"train: --data {args.data} {what}; pass the folder that holds the set's "
            "<split>/ image folders and annotations/instances_<split>.json"
        )
    _refuse_out_in_data(Path(args.out), Path(args.data), args.splits)
    folder = RunFolder(args.out)
    folder.check()
    _refuse_replacing(folder, args)  # early, for a quick answer; again once it is locked


def _refuse_out_in_data(out: Path, data: Path, splits: Sequence[str]) -> None:
    """Refuse a run folder that is the data set's folder, or lies inside the folders the
    set is read from (its split image folders, ``annotations/``): the run's files would
    mix with the data's, and the data folder would look like a run to ``predict`` and
    ``--resume``."""
    where = out.resolve()
    for folder in (data, *(data / split for split in splits), data / "annotations"):
        is_it = where == folder.resolve()
        if is_it or (folder != data and _inside(where, folder.resolve())):
            raise CommandError(
                f"train: --out {out} is {'' if is_it else 'inside '}{folder}, a folder of "
                f"the data set (--data {data}): the run's files would mix with the data's; "
                "keep runs apart from the data, e.g. --out runs/NAME"
            )


def _refuse_replacing(folder: RunFolder, args: argparse.Namespace) -> None:
    """A fresh start into a folder that holds a run is a mistake unless ``--resume`` or
    ``--overwrite`` says what to do with it; so is ``--resume`` of a folder that holds
    none (a mistyped ``--out`` would silently start a run from scratch)."""
    if args.resume and not folder.holds_run():
        raise CommandError(
            f"train --resume: {folder.path} holds no run to continue (no {RUN_FILE}, metrics "
            "or checkpoints): check --out, or leave out --resume to start a run there"
        )
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


def _check_sizes_fit_data(args, batch_size: int, world: int, train_set, val_set) -> None:
    """Refuse a batch larger than a process's share of the train split, and more
    evaluation images than the val split has: either would run, silently, with fewer
    images than asked (and ``run.json`` would record the number asked)."""
    import math

    share = math.ceil(len(train_set) / world)  # DistributedSampler's share of each process
    if batch_size > share:
        given = f"--batch-size {batch_size}" if args.batch_size else (
            f"the preset's batch size {batch_size}"
        )  # fmt: skip
        each = f", {share} for each of {world} processes" if world > 1 else ""
        raise CommandError(
            f"train: {given} is more than the train split holds ({len(train_set)} images"
            f"{each}); pass --batch-size {share} or less"
        )
    if args.num_eval_images is not None and args.num_eval_images > len(val_set):
        raise CommandError(
            f"train: --num-eval-images {args.num_eval_images} is more than the val split "
            f"holds ({len(val_set)} images); pass {len(val_set)} or less, or leave it out "
            "(all of them)"
        )


def _train_command(args: argparse.Namespace) -> int:
    import contextlib

    import torch

    from rcnn_steps.data import collate_fn
    from rcnn_steps.detectors.faster_rcnn import FasterRCNN
    from rcnn_steps.engine import (
        RunFolder,
        TrainConfig,
        distributed_sampler,
        init_distributed,
        process_rank,
        train,
    )
    from rcnn_steps.experiments.runner import (
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
    config_overrides = _parse_overrides(args.set)
    if args.threads:
        set_threads(args.threads)
    rank, world, device = init_distributed(args.device, timeout=args.timeout)
    feed = feeding(args.preset)
    batch_size = args.batch_size or feed["batch_size"]
    config = config_for_data(
        args.preset,
        load_datasets(args.data, splits=tuple(args.splits))[0],  # the train split's classes
        config_overrides,
    )
    train_set, val_set = load_datasets(
        args.data,
        masks=config.masks,
        flip=feed["flip"] if args.flip is None else args.flip,
        splits=tuple(args.splits),
        min_sizes=feed["min_sizes"],
        max_size=feed["max_size"],
    )
    _check_sizes_fit_data(args, batch_size, world, train_set, val_set)
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
            "data": _data_record(args.data, args.splits, train_set),
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
    from rcnn_steps.detectors.config import DetectorConfig
    from rcnn_steps.detectors.faster_rcnn import FasterRCNN
    from rcnn_steps.engine import RunFolder, load_checkpoint

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
    run = ckpt.get("run") or RunFolder(path.parent).description() or {}
    return model.to(device).eval(), run


def _data_record(root: str | Path, splits: Sequence[str], train_set) -> dict:
    """``run.json``'s ``"data"``: the folder, the splits, and the train split's classes:
    ``categories`` (each category's id, name and keypoint set: :class:`rcnn_steps.data.
    LabelMap`), which ``predict`` reads, and the older ``class_names`` (by label),
    ``keypoint_names`` and 0-based ``skeleton`` (the first keypoint category's), kept for
    readers written before ``categories``."""
    return {
        "root": str(Path(root).resolve()),
        "splits": list(splits),
        "class_names": train_set.class_names,
        "keypoint_names": train_set.keypoint_names,
        "skeleton": [list(p) for p in train_set.skeleton],
        "categories": train_set.label_map.categories,
    }


def data_description(root: str | Path, split: str = "train") -> dict:
    """What a run records of its data (``run.json``'s ``"data"``, :func:`_data_record`):
    the root and the classes (ids, names, keypoint sets) of ``root/annotations/
    instances_<split>.json``. A missing file is an error that says what was looked for."""
    from rcnn_steps.data import CocoDataset

    root = Path(root)
    annotations = root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        raise CommandError(
            f"--data {root}: no {annotations.relative_to(root)} there; pass the folder that "
            "holds annotations/ (the set the model was trained on)"
        )
    return _data_record(root, [split], CocoDataset(root / split, annotations, load_masks=False))


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


#: The longer side, in pixels, at which ``predict`` draws (its figures are 400 px wide):
#: a 3000 x 2000 photo is drawn from an 800 x 533 copy, its masks pasted at that size.
DRAWING_SIDE = 800


def mask_rles(probs, boxes, size, aligned: bool) -> list[dict]:
    """COCO RLEs (``counts`` as str) of ``(D, 1, M, M)`` mask probabilities pasted into an
    image of ``size`` (H, W) at ``boxes`` and cut at 0.5: one mask at a time, each over
    its box's window (:func:`rcnn_steps.modeling.mask_head.paste_masks_in_windows`), so memory is
    one ``H x W`` byte canvas however many detections there are."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from rcnn_steps.modeling.mask_head import paste_masks_in_windows

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

    from rcnn_steps.modeling.mask_head import paste_masks_in_windows

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


def _predict_command(args: argparse.Namespace) -> int:
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

    from rcnn_steps import viz
    from rcnn_steps.data.coco import read_image
    from rcnn_steps.data.transforms import ResizeShortestSide
    from rcnn_steps.evaluation import detections_to_coco
    from rcnn_steps.experiments.runner import _resized_back, trim_keypoints
    from rcnn_steps.utils import atomic_write_bytes

    if not (math.isfinite(args.score_threshold) and 0 <= args.score_threshold <= 1):
        raise CommandError(
            f"predict: --score-threshold {args.score_threshold:g}: must be a score from 0 to "
            "1 (detections scored below it are left out; 0 keeps them all)"
        )
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


def _path_argument(text: str) -> Path:
    """A path argument as argparse reads it, refusing an empty one: ``Path("")`` is the
    current folder, so ``--out "$OUT"`` with ``OUT`` unset would train, predict or clear
    into wherever the command was started."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty path; name a file or folder (. for the current folder)"
        )
    return Path(text)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rcnn_steps <command>``: ``train``, ``predict``, ``evaluate`` or ``export``
    (see the module's docstring). A user's error (bad input, a missing or damaged file)
    is one line on stderr and exit status 2; Ctrl-C is one line and 130; ``--debug``
    shows the traceback instead (:func:`rcnn_steps.utils.run_command`)."""
    from rcnn_steps.experiments import PRESETS, evaluated_presets
    from rcnn_steps.experiments.evolution import add_evaluate_arguments

    parser = argparse.ArgumentParser(prog="python -m rcnn_steps")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser(
        "evaluate",
        help="train a chapter's detector, evaluate it, write its results file and table row",
    )
    ev.add_argument("--preset", choices=evaluated_presets(), default="cpu")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--max-iter", type=int, default=None, help="default: the preset's")
    ev.add_argument(
        "--out",
        type=_path_argument,
        default=None,
        help="default results/faster_rcnn.json, faster_rcnn_fpn.json or mask_rcnn.json",
    )
    ev.add_argument(
        "--root",
        type=_path_argument,
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
        help="override a DetectorConfig field of the preset (repeatable; needs --out)",
    )
    add_evaluate_arguments(ev)

    tr = sub.add_parser("train", help="train a detector on a COCO-format folder")
    tr.add_argument(
        "--data",
        type=_path_argument,
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
    tr.add_argument(
        "--out", type=_path_argument, required=True, help="the run folder, e.g. runs/mine"
    )
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
    tr.add_argument(
        "--timeout", type=float, default=TRAIN_TIMEOUT_S,
        help="under torchrun: seconds a process waits for the others (default "
        f"{TRAIN_TIMEOUT_S:g}) before the run stops, naming the ranks that did not answer",
    )  # fmt: skip
    tr.add_argument("--no-progress", action="store_true")

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
        "--checkpoint", type=_path_argument, required=True, help="e.g. runs/mine/last.pt"
    )
    pr.add_argument(
        "--images", nargs="+", type=_path_argument, required=True, help="image files or folders"
    )
    pr.add_argument("--out", type=_path_argument, required=True)
    pr.add_argument("--score-threshold", type=float, default=0.5)
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--overwrite", action="store_true")

    ex = sub.add_parser("export", help="a weights-only copy of a checkpoint, to share or commit")
    ex.add_argument(
        "--checkpoint", type=_path_argument, required=True, help="e.g. runs/mine/last.pt"
    )
    ex.add_argument("--out", type=_path_argument, required=True, help="e.g. results/final_model.pt")
    ex.add_argument(
        "--data", type=_path_argument, default=None,
        help="the set it was trained on, to record its class names when the checkpoint's "
        "folder has no run.json (e.g. a grid run kept with --keep-runs)",
    )  # fmt: skip
    ex.add_argument("--overwrite", action="store_true")
    add_debug_argument(parser, ev, tr, pr, ex)
    args = parser.parse_args(argv)
    commands = {"evaluate": _evaluate_command, "train": _train_naming_silent_ranks,
                "predict": _predict_command, "export": _export_command}  # fmt: skip

    def interrupted() -> str:
        # run_command calls this while it handles the KeyboardInterrupt: train's says
        # where the run stopped and which checkpoint holds it
        stopped = sys.exc_info()[1]
        if args.command != "train":
            return "interrupted"
        return _train_interrupted(args, argv if argv is not None else sys.argv[1:], stopped)

    return run_command(commands[args.command], args, interrupted)


#: How long, by default, a process of ``torchrun ... train`` waits in a collective for
#: the others: far longer than any wait of a healthy run of the book's sizes (a step, an
#: evaluation's share, a checkpoint written by rank 0 take seconds), far shorter than
#: gloo's 30 minutes of silence when a process is stopped or hung. Raise it for big data
#: where one process may work alone for minutes (a large evaluation, a slow disk).
TRAIN_TIMEOUT_S = 300.0


def _train_naming_silent_ranks(args: argparse.Namespace) -> int:
    """``train`` with a collective that times out (a stopped, hung or killed process)
    reported in one line naming the ranks that did not answer
    (:func:`rcnn_steps.engine.naming_silent_ranks`), and how to resume."""
    from rcnn_steps.engine import SilentRanksError, naming_silent_ranks

    try:
        with naming_silent_ranks(args.timeout):
            return _train_command(args)
    except SilentRanksError as e:
        last = Path(args.out) / "last.pt"
        then = f"; add --resume to continue from {last}" if last.exists() else ""
        raise SilentRanksError(f"train: {e}{then}") from e


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
    from rcnn_steps.engine import RunFolder, export_weights

    _check_out_file("export", args.out, "weights", overwrite=args.overwrite)
    run = RunFolder(args.checkpoint.parent).description()
    if args.data is not None:
        data = data_description(args.data)
        _check_data_fits_checkpoint(args.data, data, args.checkpoint, run)
        run = {**(run or {}), "data": data}
    try:
        out = export_weights(args.checkpoint, args.out, overwrite=args.overwrite, run=run)
    except FileExistsError:
        raise CommandError(
            f"export: {args.out} exists: pass --overwrite to replace it, or another --out"
        ) from None
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): load it with `predict`")
    return 0


def _check_data_fits_checkpoint(root: Path, data: dict, checkpoint: Path, run: dict | None):
    """Refuse ``export --data`` with a set that cannot be the one the checkpoint's model
    was trained on: another number of classes than the model's config, or other class
    names than the run's ``run.json`` records. Its names would be stored in the copy and
    ``predict`` would label every detection with them, silently wrong."""
    from rcnn_steps.engine import load_checkpoint

    names = list(data["class_names"][1:])  # [0] is the background
    config = (load_checkpoint(checkpoint).get("model_description") or {}).get("config") or {}
    num_classes = config.get("num_classes")
    if num_classes is not None and num_classes != len(names):
        raise CommandError(
            f"export: --data {root} has {len(names)} classes ({', '.join(names)}) but the "
            f"model in {checkpoint} has {num_classes}: pass the set it was trained on"
        )
    recorded = ((run or {}).get("data") or {}).get("class_names")
    if recorded is not None and list(recorded[1:]) != names:
        raise CommandError(
            f"export: --data {root} names its classes {', '.join(names)} but the run's "
            f"{RUN_FILE} ({checkpoint.parent / RUN_FILE}) names them "
            f"{', '.join(recorded[1:])}: pass the set the run was trained on, or leave "
            "--data out (run.json's names are used)"
        )


if __name__ == "__main__":
    sys.exit(main())
