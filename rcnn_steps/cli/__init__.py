"""The command line of the library: ``python -m rcnn_steps <command>``.

The library's own commands, each in its module:

- ``train`` (:mod:`~rcnn_steps.cli.train`): train any detector of the book (by preset) on
  any COCO-format folder, with progress bars, metrics in JSON lines, atomic checkpoints,
  ``--resume``, periodic COCO evaluation; under ``torchrun --nproc_per_node N`` in N
  processes (DDP);
- ``predict`` (:mod:`~rcnn_steps.cli.predict`): a trained run's detections on a folder of
  images, written as JSON and drawn as PNGs;
- ``evaluate`` (:mod:`~rcnn_steps.cli.evaluate`): train a chapter's detector (by preset) on
  the book's synthetic set, evaluate it on the evolution table's val images, write its
  results file and its row of the evolution table (chapters 04, 05 and 07);
- ``export`` (:mod:`~rcnn_steps.cli.export`): a weights-only copy of a checkpoint.

The chapters' commands (``data``, ``sliding-window``, ``selective-search``, ``rcnn``,
``fast-rcnn``, ``ablations``, ``keypoint-debug``, ``ladder``) run their modules' own
``main`` (:mod:`~rcnn_steps.cli.chapters`); their old forms, ``python -m
rcnn_steps.ladder ...`` and the rest, still work. The checks the commands share are in
:mod:`~rcnn_steps.cli.checks`, a run's files in :mod:`~rcnn_steps.cli.runs`.

This package is the top floor: it may import every other, and nothing but ``python -m
rcnn_steps`` imports it. It reads the presets (``--preset``: model, schedule, feeding,
results file) from their records in :mod:`rcnn_steps.experiments`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rcnn_steps.cli import chapters, evaluate, export, predict, train
from rcnn_steps.cli.chapters import CHAPTER_COMMANDS
from rcnn_steps.cli.checks import OUT_FILE_KINDS, parse_overrides
from rcnn_steps.cli.evaluate import evaluate_results_path, torchvision_baseline
from rcnn_steps.cli.predict import (
    DRAWING_SIDE,
    IMAGE_SUFFIXES,
    PREDICT_MANIFEST,
    drawn_detections,
    mask_rles,
)
from rcnn_steps.cli.runs import RUN_FILE, data_description, data_record, load_run
from rcnn_steps.cli.train import RESUME_MUST_MATCH, TRAIN_TIMEOUT_S
from rcnn_steps.utils import add_debug_argument, run_command

__all__ = [
    "CHAPTER_COMMANDS",
    "DRAWING_SIDE",
    "IMAGE_SUFFIXES",
    "OUT_FILE_KINDS",
    "PREDICT_MANIFEST",
    "RESUME_MUST_MATCH",
    "RUN_FILE",
    "TRAIN_TIMEOUT_S",
    "data_description",
    "data_record",
    "drawn_detections",
    "evaluate_results_path",
    "load_run",
    "main",
    "mask_rles",
    "parse_overrides",
    "torchvision_baseline",
]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rcnn_steps <command>`` (see the package's docstring). For ``train``,
    ``predict``, ``evaluate`` and ``export``, a user's error (bad input, a missing or
    damaged file) is one line on stderr and exit status 2; Ctrl-C is one line and 130;
    ``--debug`` shows the traceback instead (:func:`rcnn_steps.utils.run_command`). A
    chapter's command is its module's ``main`` with the arguments after its name
    (:func:`rcnn_steps.cli.chapters.forward`), which answers them as it always has, under
    the name ``python -m rcnn_steps <command>``, and takes ``--debug`` the same way."""
    parser = argparse.ArgumentParser(
        prog="python -m rcnn_steps",
        description="The R-CNN family, step by step: the library's commands and the "
        "chapters'. `python -m rcnn_steps COMMAND --help` shows a command's arguments.",
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    ours = [module.add_parser(sub) for module in (evaluate, train, predict, export)]
    chapters.add_parsers(sub)
    add_debug_argument(parser, *ours)
    args = parser.parse_args(argv)
    if args.command in CHAPTER_COMMANDS:
        # a --debug before the command is the chapter's to take, as one after it
        debug = ["--debug"] if args.debug else []
        return chapters.forward(args.command, [*args.arguments, *debug])
    # looked up now, not when the module was loaded, so a test can replace a command
    commands = {"evaluate": evaluate.command, "train": train.command,
                "predict": predict.command, "export": export.command}  # fmt: skip

    def interrupted() -> str:
        # run_command calls this while it handles the KeyboardInterrupt: train's says
        # where the run stopped and which checkpoint holds it
        stopped = sys.exc_info()[1]
        if args.command != "train":
            return "interrupted"
        return train.interrupted(args, argv if argv is not None else sys.argv[1:], stopped)

    return run_command(commands[args.command], args, interrupted)
