"""The chapters' own commands as subcommands of ``python -m rcnn_steps``: ``python -m
rcnn_steps ladder plan --data 128`` runs ``python -m rcnn_steps.ladder plan --data 128``.

Each is its module's ``main(argv, prog=...)`` (:data:`CHAPTER_COMMANDS`) given every
argument after the command's name, untouched: its own ``--help``, checks and errors are
the ones shown, under the name typed (``usage: python -m rcnn_steps ladder ...``), and a
results file it writes records ``python -m rcnn_steps <command> ...``, a command that runs
again. Each takes ``--debug`` before or after its subcommand (``python -m rcnn_steps
--debug <command> ...`` passes it on): a user's error is one line, ``error: ...``, unless
``--debug`` asks for the traceback (:func:`rcnn_steps.utils.run_command`). The old
``python -m rcnn_steps.<module>`` forms stay (the shims at the package's top), under their
own names, for the commands the results files already record.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

#: Each chapter command: the module whose ``main(argv)`` runs it, and its line in
#: ``python -m rcnn_steps --help``.
CHAPTER_COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("rcnn_steps.data.__main__",
             "chapter 00: write the synthetic set or the custom-data example; check a COCO folder"),
    "sliding-window": ("rcnn_steps.experiments.sliding_window",
                       "chapter 01: train, evaluate and time the sliding-window detector"),
    "selective-search": ("rcnn_steps.experiments.selective_search",
                         "chapter 02: selective search's recall, MABO and speed, beside OpenCV's"),
    "rcnn": ("rcnn_steps.experiments.rcnn",
             "chapter 02: cache proposals; train and evaluate R-CNN, write its table row"),
    "fast-rcnn": ("rcnn_steps.experiments.fast_rcnn",
                  "chapter 03: train and evaluate Fast R-CNN, write its table row"),
    "ablations": ("rcnn_steps.experiments.ablations",
                  "chapters 04-08: the papers' ablation tables, every setting at every seed"),
    "keypoint-debug": ("rcnn_steps.experiments.keypoint_debug",
                       "chapter 07: trace the keypoint head's collapse over training"),
    "ladder": ("rcnn_steps.experiments.ladder",
               "the evolution as a controlled ladder, one change per rung (measure, plan, run)"),
}  # fmt: skip


def add_parsers(sub) -> None:
    """One subcommand of ``sub`` (the top parser's subparsers) per chapter command, taking
    every argument after its name as it is. Its parser knows no option (no ``-h`` of its
    own, and a prefix no argument starts with), so ``--help``, ``--data 128`` and the rest
    reach the module's parser, which answers them."""
    for name, (module, summary) in CHAPTER_COMMANDS.items():
        chapter = sub.add_parser(
            name,
            help=summary,
            description=f"{summary}. Runs {module}'s main: "
            f"`python -m rcnn_steps {name} --help` shows its arguments.",
            add_help=False,
            prefix_chars="\0",
        )
        chapter.add_argument("arguments", nargs=argparse.REMAINDER)


def forward(name: str, arguments: Sequence[str]) -> int:
    """Run chapter command ``name`` with ``arguments``: its module's ``main(arguments)``,
    its help and errors named ``python -m rcnn_steps <name>``.

    The module is imported here, not when the command line starts: the chapter modules
    import their detectors, training and evaluation, which ``train``, ``predict``, the
    other chapters and ``--help`` do not need."""
    import importlib

    module = importlib.import_module(CHAPTER_COMMANDS[name][0])
    return module.main(list(arguments), prog=f"python -m rcnn_steps {name}")
