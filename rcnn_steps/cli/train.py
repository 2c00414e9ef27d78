"""``python -m rcnn_steps train``: train any detector of the book (by preset) on any
COCO-format folder, with progress bars, metrics in JSON lines, atomic checkpoints,
``--resume`` and periodic COCO evaluation; under ``torchrun --nproc_per_node N`` in N
processes (DDP). Every check that needs no data runs first, in every process, before
anything is written into the run folder; a collective that times out names the ranks that
did not answer; Ctrl-C says how to continue the run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rcnn_steps.cli.checks import check_device, is_inside, parse_overrides, path_argument
from rcnn_steps.cli.runs import RUN_FILE, data_record
from rcnn_steps.engine import (
    MEMORY_FORMATS,
    RunFolder,
    SilentRanksError,
    TrainConfig,
    distributed_sampler,
    init_distributed,
    naming_silent_ranks,
    process_rank,
)
from rcnn_steps.experiments import PRESETS
from rcnn_steps.utils import CommandError, code_diff_hash, git_commit, set_threads

#: How long, by default, a process of ``torchrun ... train`` waits in a collective for
#: the others: far longer than any wait of a healthy run of the book's sizes (a step, an
#: evaluation's share, a checkpoint written by rank 0 take seconds), far shorter than
#: gloo's 30 minutes of silence when a process is stopped or hung. Raise it for big data
#: where one process may work alone for minutes (a large evaluation, a slow disk).
TRAIN_TIMEOUT_S = 300.0


def add_parser(sub) -> argparse.ArgumentParser:
    """``train``'s arguments, as a subcommand of ``sub`` (the top parser's subparsers)."""
    tr = sub.add_parser("train", help="train a detector on a COCO-format folder")
    tr.add_argument(
        "--data",
        type=path_argument,
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
        "--out", type=path_argument, required=True, help="the run folder, e.g. runs/mine"
    )
    tr.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a DetectorConfig field, flat or by section: mask_loss=softmax or "
        "mask.loss=softmax (repeatable)",
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
    tr.add_argument("--memory-format", choices=tuple(MEMORY_FORMATS), default="contiguous",
                    help="the weights' layout in training: channels_last measured 0.85-0.93x "
                         "the time of a contiguous CPU step")  # fmt: skip
    tr.add_argument("--loader-workers", type=int, default=0)
    tr.add_argument(
        "--timeout", type=float, default=TRAIN_TIMEOUT_S,
        help="under torchrun: seconds a process waits for the others (default "
        f"{TRAIN_TIMEOUT_S:g}) before the run stops, naming the ranks that did not answer",
    )  # fmt: skip
    tr.add_argument("--no-progress", action="store_true")
    return tr


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
        check_device(args.device)
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
        if is_it or (folder != data and is_inside(where, folder.resolve())):
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


def _train(args: argparse.Namespace) -> int:
    """``train`` itself: the checks, the data, the model, the run folder claimed (by the
    main process, under its lock) and :func:`rcnn_steps.engine.train`."""
    import contextlib

    import torch

    # local: the command line's start-up; and tests replace the engine's train and
    # runner.make_evaluator, which are read here at call time
    from rcnn_steps.data import collate_fn
    from rcnn_steps.detectors.faster_rcnn import FasterRCNN
    from rcnn_steps.engine import train
    from rcnn_steps.experiments.runner import (
        config_for_data,
        feeding,
        load_datasets,
        make_evaluator,
        schedule,
    )

    # every check that needs no data, in every process before they meet (so none of them
    # can have written into --out yet)
    _check_train_arguments(args)
    config_overrides = parse_overrides(args.set)
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
        memory_format=args.memory_format,
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
            "data": data_record(args.data, args.splits, train_set),
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


def command(args: argparse.Namespace) -> int:
    """``train`` with a collective that times out (a stopped, hung or killed process)
    reported in one line naming the ranks that did not answer
    (:func:`rcnn_steps.engine.naming_silent_ranks`), and how to resume."""
    try:
        with naming_silent_ranks(args.timeout):
            return _train(args)
    except SilentRanksError as e:
        last = Path(args.out) / "last.pt"
        then = f"; add --resume to continue from {last}" if last.exists() else ""
        raise SilentRanksError(f"train: {e}{then}") from e


def interrupted(args: argparse.Namespace, argv: Sequence[str], stopped) -> str:
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
