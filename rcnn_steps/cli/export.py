"""``python -m rcnn_steps export``: a weights-only copy of a checkpoint (no optimizer
state), with its run's description, to share or commit; ``predict`` reads it."""

from __future__ import annotations

import argparse
from pathlib import Path

from rcnn_steps.cli.checks import check_out_file, path_argument
from rcnn_steps.cli.runs import RUN_FILE, data_description
from rcnn_steps.engine import RunFolder, export_weights, load_checkpoint
from rcnn_steps.utils import CommandError


def add_parser(sub) -> argparse.ArgumentParser:
    """``export``'s arguments, as a subcommand of ``sub`` (the top parser's subparsers)."""
    ex = sub.add_parser("export", help="a weights-only copy of a checkpoint, to share or commit")
    ex.add_argument(
        "--checkpoint", type=path_argument, required=True, help="e.g. runs/mine/last.pt"
    )
    ex.add_argument("--out", type=path_argument, required=True, help="e.g. results/final_model.pt")
    ex.add_argument(
        "--data", type=path_argument, default=None,
        help="the set it was trained on, to record its class names when the checkpoint's "
        "folder has no run.json (e.g. a grid run kept with --keep-runs)",
    )  # fmt: skip
    ex.add_argument("--overwrite", action="store_true")
    return ex


def command(args: argparse.Namespace) -> int:
    """``export``: the checkpoint's weights and its run's description (its folder's
    ``run.json``, or ``--data``'s classes, checked against the model) in one file."""
    check_out_file("export", args.out, "weights", overwrite=args.overwrite)
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
