"""The evolution table: one row per chapter's detector, measured the same way (GUIDE §7).

Every row holds COCO box AP and AP50 on the same validation images
(:func:`evaluation_image_ids`) and seconds per image on the machine that ran it. Each
chapter's library command adds or replaces its own row in ``results/evolution.json`` with
:func:`add_row`; chapter 08 shows the whole table beside the papers' timings.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rcnn_steps.utils import (
    atomic_write_bytes,
    code_diff_hash,
    git_commit,
    machine_info,
    results_dir,
)

__all__ = [
    "NUM_EVAL_IMAGES",
    "PAPER_SECONDS_PER_IMAGE",
    "add_evaluate_arguments",
    "add_row",
    "evaluation_image_ids",
    "evolution_path",
    "read_table",
]

#: The papers' test-time speeds, for the table in chapter 08 (seconds per image, GPU).
PAPER_SECONDS_PER_IMAGE = {
    "R-CNN": 47.0,  # Fast R-CNN paper, Table 4 (VGG16, with selective search)
    "Fast R-CNN": 2.0,  # about 2 s with selective search proposals (Faster R-CNN §1)
    "Faster R-CNN": 0.2,  # Faster R-CNN Table 5 (VGG16, 5 fps)
    "Mask R-CNN": 0.2,  # Mask R-CNN §3.1 (about 5 fps)
}

#: How many validation images the table's rows are measured on.
NUM_EVAL_IMAGES = 50


def evolution_path() -> Path:
    return results_dir() / "evolution.json"


def evaluation_image_ids(dataset, num_images: int = NUM_EVAL_IMAGES) -> list[int]:
    """The first ``num_images`` image ids of a validation :class:`~rcnn_steps.data.CocoDataset`:
    every row of the table is measured on these same images."""
    return list(dataset.image_ids[:num_images])


def add_row(
    chapter: str,
    detector: str,
    metrics: dict[str, float],
    seconds_per_image: float,
    *,
    path: str | os.PathLike | None = None,
    notes: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add (or replace) ``detector``'s row, recording the command, commit and machine.

    ``metrics`` holds at least ``AP`` and ``AP50`` (COCO box AP in [0, 1]).
    """
    path = Path(path) if path is not None else evolution_path()
    for key in ("AP", "AP50"):
        if key not in metrics:
            raise ValueError(f"metrics must hold {key!r}; got {sorted(metrics)}")
    table = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    table["rows"][detector] = {
        "chapter": chapter,
        "detector": detector,
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        "seconds_per_image": round(float(seconds_per_image), 4),
        "notes": notes,
        "extra": extra or {},
        "provenance": {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "commit": git_commit(),
            "code_diff_sha256": code_diff_hash(),
            "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
    }
    atomic_write_bytes(path, (json.dumps(table, indent=2, sort_keys=True) + "\n").encode())
    return table["rows"][detector]


def read_table(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The rows, in chapter order."""
    path = Path(path) if path is not None else evolution_path()
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist yet: it is written by the chapters' library commands "
            "(see the README's book table for each command)"
        )
    rows = json.loads(path.read_text())["rows"].values()
    return sorted(rows, key=lambda r: (r["chapter"], r["detector"]))


def add_evaluate_arguments(parser) -> None:
    """The options every detector's ``evaluate`` command shares (an
    ``argparse.ArgumentParser``): ``--threads`` (training), ``--timing-threads`` (test
    time, so rows are timed alike), ``--progress`` and ``--no-evolution``."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--timing-threads", type=int, default=None, help="threads at test time (default --threads)"
    )
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--no-evolution", action="store_true", help="do not add the table row")
